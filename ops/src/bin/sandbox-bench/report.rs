//! The benchmark's one table: a [`Row`] per figure with its verdict, latency percentiles, and
//! the table printed and written as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;
use serde_json::json;

/// One figure of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: &'static str,
    pub figure: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
    /// The figures behind `measured`, for the JSON.
    pub json: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    Info,
    NotMeasured,
}

impl Verdict {
    pub fn of(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Info => "-",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// A measurement that could not be taken, with the reason.
pub fn failed(id: &'static str, figure: &str, error: &anyhow::Error) -> Row {
    Row {
        id,
        figure: figure.to_owned(),
        measured: format!("failed: {error:#}"),
        target: "-".to_owned(),
        verdict: Verdict::Miss,
        json: json!({ "failed": format!("{error:#}") }),
    }
}

pub fn not_measured(id: &'static str, figure: &str, why: &str) -> Row {
    Row {
        id,
        figure: figure.to_owned(),
        measured: format!("not measured: {why}"),
        target: "-".to_owned(),
        verdict: Verdict::NotMeasured,
        json: json!({ "not_measured": why }),
    }
}

/// Latencies in milliseconds, with nearest-rank percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies(pub Vec<f64>);

impl Latencies {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
            self.percentile(50.0),
            self.percentile(95.0),
            self.percentile(99.0)
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "samples": self.0.len(),
            "p50_ms": self.percentile(50.0),
            "p95_ms": self.percentile(95.0),
            "p99_ms": self.percentile(99.0),
        })
    }
}

/// `name value<unit>, ...` for per-process figures.
pub fn format_map(map: &BTreeMap<String, f64>, unit: &str) -> String {
    map.iter()
        .map(|(name, value)| format!("{name} {value:.2}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the table sorted by id, then writes it as JSON to `path`.
pub fn finish(mut rows: Vec<Row>, begun: Instant, path: &Path) -> anyhow::Result<()> {
    rows.sort_by_key(|row| row.id);
    print_table(&rows);
    println!("(took {:.0} s)", begun.elapsed().as_secs_f64());
    let document = json!({
        "measured_at": Utc::now(),
        "seconds": begun.elapsed().as_secs_f64(),
        "rows": rows.iter().map(|row| json!({
            "id": row.id, "figure": row.figure, "measured": row.measured,
            "target": row.target, "verdict": row.verdict.as_str(), "data": row.json,
        })).collect::<Vec<_>>(),
    });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("written to {}", path.display());
    Ok(())
}

fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|row| row.figure.len()).max().unwrap_or(0);
    println!("   | {:<width$} | measured | target | result", "figure");
    for row in rows {
        println!(
            "{:<2} | {:<width$} | {} | {} | {}",
            row.id,
            row.figure,
            row.measured,
            row.target,
            row.verdict.as_str()
        );
    }
}
