//! Latency of each saga step on this instance, as HDR histograms (`GetSagaStats`).
//!
//! Recording costs one uncontended-in-practice mutex and an array increment per step; the
//! histograms cover 1 µs to 1 hour at 3 significant digits, in microseconds.

use std::{sync::Mutex, time::Duration};

use hdrhistogram::Histogram;

/// A measured step of placing an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the order row (the first fenced write).
    Create,
    /// Waiting for a saga slot (`ORDER_MAX_SAGAS`).
    SlotWait,
    /// One `Reserve` call to a participant.
    Reserve,
    /// One `Assign` call.
    Assign,
    /// One `Release` call.
    Release,
    /// One fenced write of the saga state.
    Persist,
    /// A whole drive, from claim to the last write.
    Saga,
}

impl Step {
    /// Every step, in the order they are reported.
    pub const ALL: [Step; 7] = [
        Step::Create,
        Step::SlotWait,
        Step::Reserve,
        Step::Assign,
        Step::Release,
        Step::Persist,
        Step::Saga,
    ];

    /// Name in `GetSagaStats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::SlotWait => "slot_wait",
            Step::Reserve => "reserve",
            Step::Assign => "assign",
            Step::Release => "release",
            Step::Persist => "persist",
            Step::Saga => "saga",
        }
    }
}

/// One histogram per step.
#[derive(Debug)]
pub struct StepStats {
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Default for StepStats {
    fn default() -> Self {
        let hist =
            || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("1 µs to 1 h at 3 digits");
        Self {
            hists: Step::ALL.iter().map(|_| Mutex::new(hist())).collect(),
        }
    }
}

impl StepStats {
    fn slot(&self, step: Step) -> &Mutex<Histogram<u64>> {
        &self.hists[Step::ALL.iter().position(|s| *s == step).unwrap_or(0)]
    }

    /// Records one run of `step` that took `took` (also in the `saga_step_duration_seconds`
    /// Prometheus histogram).
    pub fn record(&self, step: Step, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.slot(step).lock() {
            h.saturating_record(micros);
        }
        metrics::histogram!("saga_step_duration_seconds", "step" => step.as_str())
            .record(took.as_secs_f64());
    }

    /// A copy of every step's histogram.
    pub fn snapshot(&self) -> Vec<(Step, Histogram<u64>)> {
        Step::ALL
            .iter()
            .filter_map(|&step| Some((step, self.slot(step).lock().ok()?.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_recorded_apart() {
        let stats = StepStats::default();
        stats.record(Step::Reserve, Duration::from_millis(3));
        stats.record(Step::Reserve, Duration::from_millis(5));
        stats.record(Step::Persist, Duration::from_micros(10));
        let snap = stats.snapshot();
        let count = |step| {
            snap.iter()
                .find(|(s, _)| *s == step)
                .map(|(_, h)| h.len())
                .expect("every step")
        };
        assert_eq!(count(Step::Reserve), 2);
        assert_eq!(count(Step::Persist), 1);
        assert_eq!(count(Step::Saga), 0);
    }
}
