//! Number and text formatting shared by the page and the summary table.

use super::RunConfig;

/// Escapes text for HTML element content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An integer with thousands separators: `1234567` → `1,234,567`.
pub(super) fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate or other measured quantity with a precision that suits its size.
pub(super) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let a = v.abs();
    if a >= 1_000.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", fmt_int(a.round() as u64))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency in milliseconds.
pub(super) fn fmt_ms(v: f64) -> String {
    fmt_num(v)
}

/// A ratio, with two decimals.
pub(super) fn fmt_ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".to_owned()
    }
}

/// Seconds, without a trailing ".0" for whole numbers.
pub(super) fn fmt_secs(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0} s")
    } else {
        format!("{v:.1} s")
    }
}

/// The load model in words: "closed loop, 64 clients" or "open loop at 500 orders/s".
pub(super) fn describe_load(c: &RunConfig) -> String {
    if c.mode == "open" {
        match c.rate {
            Some(r) => format!(
                "open loop at {} orders/s (up to {} in flight)",
                fmt_num(r),
                c.clients
            ),
            None => format!("open loop (up to {} in flight)", c.clients),
        }
    } else if c.mode == "closed" {
        format!(
            "closed loop, {} client{}",
            c.clients,
            if c.clients == 1 { "" } else { "s" }
        )
    } else {
        format!("{} loop, {} clients", c.mode, c.clients)
    }
}

// ---------------------------------------------------------------------------------------------
// Charts

/// A peak RSS cell: "n/a" when it was not measured.
pub(super) fn fmt_rss(mib: f64) -> String {
    if mib > 0.0 {
        fmt_num(mib)
    } else {
        "n/a".to_owned()
    }
}
