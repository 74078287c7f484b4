//! What the demo shows at the end: the requests by class as the clients saw them, audit log
//! excerpts and metric lines.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use super::http::Outcome;

/// Outcomes of the requests sent, per class, in the order the classes first appear.
#[derive(Debug, Default)]
pub struct Tally {
    classes: Vec<Class>,
}

#[derive(Debug)]
struct Class {
    name: String,
    /// How many got each outcome, e.g. `200`, `401 invalid_token`, `no connection`.
    outcomes: BTreeMap<String, u32>,
    /// 200s per upstream service.
    upstreams: BTreeMap<String, u32>,
}

impl Tally {
    pub fn record(&mut self, class: &str, outcome: &Outcome) {
        let i = match self.classes.iter().position(|c| c.name == class) {
            Some(i) => i,
            None => {
                self.classes.push(Class {
                    name: class.to_owned(),
                    outcomes: BTreeMap::new(),
                    upstreams: BTreeMap::new(),
                });
                self.classes.len() - 1
            }
        };
        let c = &mut self.classes[i];
        *c.outcomes.entry(label(outcome)).or_default() += 1;
        if let Outcome::Answer(r) = outcome {
            if let (200, Some(up)) = (r.status, r.upstream()) {
                *c.upstreams.entry(up).or_default() += 1;
            }
        }
    }

    /// 200s per upstream service over every class.
    pub fn upstreams(&self) -> BTreeMap<String, u32> {
        let mut all = BTreeMap::new();
        for c in &self.classes {
            for (up, n) in &c.upstreams {
                *all.entry(up.clone()).or_default() += n;
            }
        }
        all
    }

    pub fn table(&self) -> String {
        let width = self
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = format!("{:<width$} {:>5}  WHAT THEY GOT\n", "CLASS", "SENT");
        for c in &self.classes {
            let sent: u32 = c.outcomes.values().sum();
            let mut got: Vec<String> = c
                .outcomes
                .iter()
                .map(|(o, n)| format!("{o} x{n}"))
                .collect();
            // Status codes sort before "no connection".
            got.sort_by_key(|g| !g.starts_with(|ch: char| ch.is_ascii_digit()));
            let mut line = format!("{:<width$} {sent:>5}  {}", c.name, got.join(", "));
            if !c.upstreams.is_empty() {
                let ups: Vec<String> = c
                    .upstreams
                    .iter()
                    .map(|(u, n)| format!("{u} {n}"))
                    .collect();
                let _ = write!(line, " (upstream {})", ups.join(", "));
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// A short name for an outcome: the status, with the gateway's refusal code when there is one.
pub fn label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answer(r) => match r.error_code() {
            Some(code) => format!("{} {code}", r.status),
            None => r.status.to_string(),
        },
        Outcome::Failed { connect: true, .. } => "no connection".into(),
        Outcome::Failed { .. } => "no answer".into(),
    }
}

/// Audit lines worth showing: the first allowed request of `route`, the first 401, the first
/// inspection block, the auto-ban and the first XDP drop event; each with what it shows.
pub fn audit_excerpts<'a>(lines: &'a [Value], route: &str) -> Vec<(&'static str, &'a Value)> {
    let first = |what: &'static str, f: &dyn Fn(&Value) -> bool| {
        lines.iter().find(|l| f(l)).map(|l| (what, l))
    };
    [
        first("an authorised request", &|l| {
            l["route"] == route && l["status"] == 200
        }),
        first("a refused credential", &|l| l["status"] == 401),
        first("an inspection block", &|l| {
            l["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("inspect:"))
        }),
        first("the auto-ban", &|l| l["type"] == "autoban"),
        first("an XDP drop event", &|l| l["type"] == "xdp_drop"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The sample lines of the metric families in `names` from a Prometheus text exposition.
pub fn metric_lines<'a>(text: &'a str, names: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let family = l.split(['{', ' ']).next().unwrap_or("");
            names.contains(&family)
        })
        .collect()
}

/// The value of one sample (`name{labels}` exactly as exposed).
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::demo::http::Reply;

    fn answer(status: u16, body: Value) -> Outcome {
        let headers = match body["upstream"].as_str() {
            Some(up) => vec![("x-upstream".to_string(), up.to_string())],
            None => Vec::new(),
        };
        Outcome::Answer(Reply {
            status,
            headers,
            body: body.to_string(),
        })
    }

    #[test]
    fn the_table_counts_outcomes_and_upstreams_per_class() {
        let mut t = Tally::default();
        for up in ["a", "b", "b"] {
            t.record("authorised", &answer(200, json!({"upstream": up})));
        }
        t.record(
            "refused",
            &answer(401, json!({"error": "invalid_token", "status": 401})),
        );
        t.record(
            "refused",
            &Outcome::Failed {
                connect: true,
                error: "timed out".into(),
                after: Duration::from_secs(1),
            },
        );
        t.record(
            "refused",
            &answer(403, json!({"error": "insufficient_scope"})),
        );
        t.record("authorised", &answer(200, json!({"upstream": "a"})));
        assert_eq!(
            t.table(),
            "CLASS       SENT  WHAT THEY GOT\n\
             authorised     4  200 x4 (upstream a 2, b 2)\n\
             refused        3  401 invalid_token x1, 403 insufficient_scope x1, no connection x1\n"
        );
        assert_eq!(
            t.upstreams(),
            BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)])
        );
    }

    #[test]
    fn excerpts_pick_one_line_of_each_kind() {
        let lines = vec![
            json!({"route": "health", "status": 200}),
            json!({"route": "orders", "status": 401, "rule": "auth:missing"}),
            json!({"route": "orders", "status": 200, "decision": "allow"}),
            json!({"route": "orders", "status": 403, "rule": "inspect:sqli-003"}),
            json!({"type": "autoban", "rule": "bad-credentials"}),
            json!({"route": "orders", "status": 401}),
        ];
        let picked: Vec<(&str, &Value)> = audit_excerpts(&lines, "orders");
        let kinds: Vec<&str> = picked.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "an authorised request",
                "a refused credential",
                "an inspection block",
                "the auto-ban"
            ]
        );
        assert_eq!(picked[0].1, &lines[2]);
        assert_eq!(picked[1].1, &lines[1]);
    }

    #[test]
    fn metric_lines_by_family() {
        let text = "# HELP gateway_autobans_total x\n\
                    # TYPE gateway_autobans_total counter\n\
                    gateway_autobans_total{rule=\"bad-credentials\"} 1\n\
                    gateway_autobans_totalx 3\n\
                    gateway_open_connections 2\n";
        assert_eq!(
            metric_lines(
                text,
                &["gateway_autobans_total", "gateway_open_connections"]
            ),
            [
                "gateway_autobans_total{rule=\"bad-credentials\"} 1",
                "gateway_open_connections 2"
            ]
        );
        assert_eq!(
            metric(text, "gateway_autobans_total{rule=\"bad-credentials\"}"),
            Some(1.0)
        );
        assert_eq!(metric(text, "gateway_autobans_total"), None);
    }
}
