//! What the benchmark shows and writes: progress bars, latency statistics, the human table and
//! the JSON report.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// A progress bar on stderr (hidden when stderr is not a terminal, where a line per phase is
/// printed instead).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:40} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    if bar.is_hidden() {
        // No terminal (CI, a log file): a progress line every 10 s instead of the bar.
        eprintln!("  … {what} (0/{len})");
        let (bar, what) = (bar.clone(), what.to_owned());
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            if bar.is_finished() {
                break;
            }
            eprintln!("  … {what} ({}/{len})", bar.position());
        });
    }
    bar
}

/// Prints a phase line (progress for the log when there is no terminal).
pub(crate) fn phase(what: &str) {
    eprintln!("  … {what}");
}

/// Latency distribution of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) n: usize,
    /// Median.
    pub(crate) p50: Duration,
    /// 99th percentile.
    pub(crate) p99: Duration,
    /// Maximum.
    pub(crate) max: Duration,
}

impl Latency {
    /// Computes the distribution (sorts `samples`).
    pub(crate) fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Latency {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }

    /// As JSON, in milliseconds.
    pub(crate) fn json(&self) -> Value {
        json!({"samples": self.n, "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

/// Milliseconds with microsecond precision.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The median of `values` (0 for none).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A table printed as aligned columns.
pub(crate) struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub(crate) fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it to stdout.
    pub(crate) fn print(&self) {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < width.len() {
                    width[i] = width[i].max(c.len());
                }
            }
        }
        println!("\n{}", self.title);
        let line = |cells: &[String]| {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:>w$}", c, w = width.get(i).copied().unwrap_or(0)))
                .collect();
            println!("  {}", s.join("  "));
        };
        line(&self.header);
        println!(
            "  {}",
            width
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for r in &self.rows {
            line(r);
        }
    }
}

/// A target check for the summary: `value` compared with `bound` by `cmp` (`<=`, `>=`, `<`,
/// `==`). `judged = false` (`--quick`: sizes too small) reports the value but never a pass or a
/// failure. The comparison travels in the JSON so medians of repeated runs can be judged again.
pub(crate) fn target(
    name: &str,
    goal: &str,
    value: f64,
    unit: &str,
    cmp: &str,
    bound: f64,
    judged: bool,
) -> Value {
    json!({"target": name, "goal": goal, "value": value, "unit": unit, "cmp": cmp, "bound": bound,
           "judged": judged, "measured": format_value(value, unit),
           "met": judged.then(|| compare(value, cmp, bound))})
}

/// Whether `value cmp bound` holds.
pub(crate) fn compare(value: f64, cmp: &str, bound: f64) -> bool {
    match cmp {
        "<=" => value <= bound,
        ">=" => value >= bound,
        "<" => value < bound,
        "==" => (value - bound).abs() < 1e-9,
        _ => false,
    }
}

/// A value with its unit, rates with thousands separators.
pub(crate) fn format_value(value: f64, unit: &str) -> String {
    if value.abs() >= 1000.0 {
        format!("{} {unit}", rate(value))
    } else {
        format!("{value:.2} {unit}")
    }
}

/// Formats a rate with thousands separators.
pub(crate) fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
