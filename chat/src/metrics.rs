//! The chat's runs as Prometheus metrics: started and ended (by outcome), going now, tokens,
//! the time to the agent's first token (its first streamed delta), permission requests by answer, and each outpost's
//! health. Plain atomics, written as text at scrape time (as the gateway's are).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::frames::Outcome;

/// Upper bounds of the first-output histogram, in seconds.
const BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Error, "error"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Interrupted, "interrupted"),
];
/// Answers to a permission request, for `edge_chat_permission_requests_total{answer}`.
pub const ANSWERS: [&str; 3] = ["allow", "deny", "timeout"];

/// The counters of the chat's runs.
#[derive(Debug, Default)]
pub struct RunMetrics {
    started: AtomicU64,
    ended: [AtomicU64; 5],
    active: AtomicI64,
    tokens_input: AtomicU64,
    tokens_output: AtomicU64,
    first_output: [AtomicU64; 11],
    first_output_sum_ms: AtomicU64,
    permissions: [AtomicU64; 3],
}

fn outcome_index(o: Outcome) -> usize {
    OUTCOMES.iter().position(|(x, _)| *x == o).unwrap_or(1)
}

impl RunMetrics {
    pub fn started(&self) {
        self.started.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
    }

    /// Runs going now.
    pub fn active(&self) -> i64 {
        self.active.load(Relaxed)
    }

    /// A run that this process started has ended.
    pub fn ended(&self, outcome: Outcome, input: u64, output: u64) {
        self.ended[outcome_index(outcome)].fetch_add(1, Relaxed);
        self.active.fetch_sub(1, Relaxed);
        self.tokens_input.fetch_add(input, Relaxed);
        self.tokens_output.fetch_add(output, Relaxed);
    }

    /// Runs found unfinished at start (edge stopped during them).
    pub fn interrupted(&self, n: u64) {
        self.ended[outcome_index(Outcome::Interrupted)].fetch_add(n, Relaxed);
    }

    /// The time from a run's start to the agent's first output.
    pub fn first_output(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.first_output[i].fetch_add(1, Relaxed);
        self.first_output_sum_ms
            .fetch_add(d.as_millis() as u64, Relaxed);
    }

    /// A permission request answered `answer` (one of [`ANSWERS`]).
    pub fn permission(&self, answer: &str) {
        if let Some(i) = ANSWERS.iter().position(|a| *a == answer) {
            self.permissions[i].fetch_add(1, Relaxed);
        }
    }

    /// The text exposition; `outposts` as [`crate::Orchestrator::outpost_status`] gives them.
    pub fn render(&self, outposts: &[(String, u64, u64, Option<String>)]) -> String {
        let mut o = String::with_capacity(2048);
        o.push_str("# HELP edge_chat_runs_started_total Agent runs started.\n");
        o.push_str("# TYPE edge_chat_runs_started_total counter\n");
        let _ = writeln!(
            o,
            "edge_chat_runs_started_total {}",
            self.started.load(Relaxed)
        );
        o.push_str("# HELP edge_chat_runs_ended_total Agent runs ended, by outcome.\n");
        o.push_str("# TYPE edge_chat_runs_ended_total counter\n");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "edge_chat_runs_ended_total{{outcome=\"{name}\"}} {}",
                self.ended[i].load(Relaxed)
            );
        }
        o.push_str("# HELP edge_chat_runs_active Agent runs going now.\n");
        o.push_str("# TYPE edge_chat_runs_active gauge\n");
        let _ = writeln!(o, "edge_chat_runs_active {}", self.active.load(Relaxed));
        o.push_str("# HELP edge_chat_tokens_total Tokens the agents reported, by kind.\n");
        o.push_str("# TYPE edge_chat_tokens_total counter\n");
        let _ = writeln!(
            o,
            "edge_chat_tokens_total{{kind=\"input\"}} {}",
            self.tokens_input.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "edge_chat_tokens_total{{kind=\"output\"}} {}",
            self.tokens_output.load(Relaxed)
        );
        o.push_str(
            "# HELP edge_chat_first_output_seconds Time from a run's start to the agent's first streamed token.\n",
        );
        o.push_str("# TYPE edge_chat_first_output_seconds histogram\n");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.first_output[i].load(Relaxed);
            let _ = writeln!(
                o,
                "edge_chat_first_output_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        cum += self.first_output[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            o,
            "edge_chat_first_output_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            o,
            "edge_chat_first_output_seconds_sum {}",
            self.first_output_sum_ms.load(Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(o, "edge_chat_first_output_seconds_count {cum}");
        o.push_str(
            "# HELP edge_chat_permission_requests_total Tool permission requests, by answer.\n",
        );
        o.push_str("# TYPE edge_chat_permission_requests_total counter\n");
        for (i, a) in ANSWERS.iter().enumerate() {
            let _ = writeln!(
                o,
                "edge_chat_permission_requests_total{{answer=\"{a}\"}} {}",
                self.permissions[i].load(Relaxed)
            );
        }
        o.push_str(
            "# HELP edge_chat_outpost_up Whether an outpost takes runs (0: resting after a failure).\n",
        );
        o.push_str("# TYPE edge_chat_outpost_up gauge\n");
        for (name, _, _, resting) in outposts {
            let _ = writeln!(
                o,
                "edge_chat_outpost_up{{outpost=\"{}\"}} {}",
                name.replace(['"', '\\', '\n'], "_"),
                u8::from(resting.is_none())
            );
        }
        o.push_str(
            "# HELP edge_chat_outpost_runs Runs going on an outpost now, and its capacity.\n",
        );
        o.push_str("# TYPE edge_chat_outpost_runs gauge\n");
        for (name, running, capacity, _) in outposts {
            let n = name.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(o, "edge_chat_outpost_runs{{outpost=\"{n}\"}} {running}");
            let _ = writeln!(
                o,
                "edge_chat_outpost_capacity{{outpost=\"{n}\"}} {capacity}"
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_by_outcome_and_bucket() {
        let m = RunMetrics::default();
        m.started();
        m.started();
        m.ended(Outcome::Ok, 10, 5);
        m.first_output(Duration::from_millis(300));
        m.permission("deny");
        let t = m.render(&[
            ("local".into(), 1, 4, None),
            ("ssh-a".into(), 0, 2, Some("down".into())),
        ]);
        for line in [
            "edge_chat_runs_started_total 2",
            "edge_chat_runs_ended_total{outcome=\"ok\"} 1",
            "edge_chat_runs_active 1",
            "edge_chat_tokens_total{kind=\"input\"} 10",
            "edge_chat_first_output_seconds_bucket{le=\"0.25\"} 0",
            "edge_chat_first_output_seconds_bucket{le=\"0.5\"} 1",
            "edge_chat_permission_requests_total{answer=\"deny\"} 1",
            "edge_chat_outpost_up{outpost=\"local\"} 1",
            "edge_chat_outpost_up{outpost=\"ssh-a\"} 0",
            "edge_chat_outpost_capacity{outpost=\"local\"} 4",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
    }
}
