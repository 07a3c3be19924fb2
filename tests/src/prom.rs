//! A tiny Prometheus text-format reader: enough to read counters by name and
//! labels.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parse Prometheus/OpenMetrics text. Comments, `# EOF` and lines that
    /// do not parse are skipped.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Every relayhub series that is not zero, one per line (diagnostics).
    pub fn nonzero(&self) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with("relayhub_") && s.value != 0.0)
            .map(|s| format!("{}{:?}={}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n  ")
    }

    /// The value of the sample named `name` whose labels include all of
    /// `labels`; the sum if several match; `None` if none does.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in &self.samples {
            if s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`get`](Self::get), for a series the hub always exports: a
    /// missing one panics (naming the series of that name it has), so a
    /// renamed metric or label fails the check instead of reading as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(v) => v,
            None => {
                let same_name: Vec<String> = self
                    .samples
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| format!("{:?}", s.labels))
                    .collect();
                panic!(
                    "no series {name} with labels {labels:?} in the exposition; series of that name: {}",
                    if same_name.is_empty() {
                        "none".to_string()
                    } else {
                        same_name.join(", ")
                    }
                )
            }
        }
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut val = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        other => val.push(other),
                    },
                    '"' => break i,
                    c => val.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.insert(key, val);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_with_labels() {
        let m = Metrics::parse(
            "# HELP relayhub_relayed_packets Relayed.\n\
             # TYPE relayhub_relayed_packets counter\n\
             relayhub_relayed_packets_total{path=\"xdp\"} 120\n\
             relayhub_relayed_packets_total{path=\"userspace\"} 6\n\
             relayhub_xdp_counter_total{counter=\"drop_loop\",x=\"a\\\"b\"} 0 1700000000\n\
             up 1\n\
             # EOF\n",
        );
        assert_eq!(
            m.get("relayhub_relayed_packets_total", &[("path", "xdp")]),
            Some(120.0)
        );
        assert_eq!(
            m.get("relayhub_relayed_packets_total", &[("path", "userspace")]),
            Some(6.0)
        );
        assert_eq!(m.get("relayhub_relayed_packets_total", &[]), Some(126.0));
        assert_eq!(
            m.get("relayhub_xdp_counter_total", &[("x", "a\"b")]),
            Some(0.0)
        );
        assert_eq!(m.get("up", &[]), Some(1.0));
        assert_eq!(
            m.get("relayhub_relayed_packets_total", &[("path", "tc")]),
            None
        );
    }

    #[test]
    fn value_of_a_missing_series_fails() {
        let m = Metrics::parse("relayhub_spoke_roams_total{spoke=\"s1\"} 0\n");
        assert_eq!(
            m.value("relayhub_spoke_roams_total", &[("spoke", "s1")]),
            0.0
        );
        let renamed_label =
            std::panic::catch_unwind(|| m.value("relayhub_spoke_roams_total", &[("name", "s1")]));
        let msg = *renamed_label.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains(r#"{"spoke": "s1"}"#), "{msg}");
        assert!(std::panic::catch_unwind(|| m.value("relayhub_roams_total", &[])).is_err());
    }
}
