//! The metric names in three places agree: what the code records (`counter!`, `gauge!` and
//! `histogram!` calls under `crates/` and `services/`), the README's metrics table, and the
//! queries of the Grafana dashboard in `deploy/grafana/`. No image registry is reachable where
//! the tests run, so Prometheus and Grafana themselves cannot start here; this keeps a rename
//! from silently emptying a documented series or a dashboard panel.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Prefixes of order-saga's own series.
const PREFIXES: [&str; 3] = ["saga_", "reservation_", "admission_"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ours(name: &str) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first string literal after each `counter!(`, `gauge!(` and `histogram!(` in `source`.
fn recorded_in(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for macro_open in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in source.match_indices(macro_open) {
            let rest = source[at + macro_open.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                let end = literal.find('"').expect("a closed string literal");
                names.push(literal[..end].to_owned());
            }
        }
    }
    names
}

fn recorded() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    rust_files(&root().join("services"), &mut files);
    files
        .iter()
        .flat_map(|f| recorded_in(&std::fs::read_to_string(f).expect("read source")))
        .filter(|n| ours(n))
        .collect()
}

/// The names in the first cell of each row of the README's metrics table.
fn documented() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|row| row.split(" | ").next())
        .flat_map(|cell| {
            format!("`{cell}")
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|n| ours(n))
        .collect()
}

/// Every `expr` string anywhere in the dashboard.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The series the dashboard queries, with a histogram's `_bucket`/`_count`/`_sum` folded into
/// its name.
fn charted() -> BTreeSet<String> {
    let path = root().join("deploy/grafana/dashboards/order-saga.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let mut all = Vec::new();
    exprs(&json, &mut all);
    assert!(!all.is_empty(), "the dashboard has no queries");
    all.iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| ours(t))
                .map(|t| {
                    ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| t.strip_suffix(s))
                        .unwrap_or(t)
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn readme_and_dashboard_name_exactly_the_metrics_the_code_records() {
    let recorded = recorded();
    assert!(
        recorded.len() >= 10,
        "found too few metrics in the code: {recorded:?}"
    );
    let documented = documented();
    assert_eq!(
        documented, recorded,
        "the README's metrics table (left) and the code (right) disagree"
    );
    let charted = charted();
    assert_eq!(
        charted, recorded,
        "the Grafana dashboard's queries (left) and the code (right) disagree"
    );
}

#[test]
fn recorded_names_are_read_across_lines() {
    let source = "metrics::counter!(\n    \"saga_a_total\",\n    \"k\" => v)\n\
                  metrics::gauge!(\"admission_b\").set(1.0); histogram!(name)";
    assert_eq!(recorded_in(source), ["saga_a_total", "admission_b"]);
}
