//! A small parser of the Prometheus text exposition format (version 0.0.4): what a worker's
//! metrics endpoint serves, read by the diagnosis and by the monitoring during recovery.

/// Largest page read from a metrics endpoint; one is a few KiB.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// Label names and values, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

/// Samples, and the lines that could not be parsed (`line N: reason`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

impl Parsed {
    /// The sum of every series of `name` (across labels), or `None` when there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut values = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .peekable();
        values.peek()?;
        Some(values.sum())
    }
}

/// Parse exposition text: `# HELP`/`# TYPE`/comments and blank lines are skipped, bad lines
/// are reported in `errors` and skipped.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(s) => out.samples.push(s),
            Err(e) => out.errors.push(format!("line {}: {e}", i + 1)),
        }
    }
    out
}

/// Why a sample line could not be parsed; the text is what [`Parsed::errors`] carries after
/// `line N: `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("bad metric name in {0:?}")]
    BadName(String),
    #[error("no value in {0:?}")]
    NoValue(String),
    #[error(transparent)]
    BadValue(#[from] BadValue),
    #[error("bad timestamp {0:?}")]
    BadTimestamp(String),
    #[error("unexpected {0:?} after the timestamp")]
    Trailing(String),
    #[error(transparent)]
    Labels(#[from] LabelError),
}

/// A sample value that is not a number, `NaN` or an infinity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad value {0:?}")]
pub struct BadValue(pub String);

/// Why a label set (`{a="x",b="y"}`) could not be parsed; `label` is the last name read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("unterminated label set")]
    Unterminated,
    #[error("bad label name at {0:?}")]
    BadName(String),
    #[error("expected '=' after label {label}")]
    NoEquals { label: String },
    #[error("expected '\"' for label {label}")]
    NoQuote { label: String },
    #[error("unterminated value of label {label}")]
    UnterminatedValue { label: String },
    #[error("expected ',' or '}}' after label {label}")]
    NoSeparator { label: String },
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

pub fn parse_line(line: &str) -> Result<Sample, ParseError> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err(ParseError::BadName(short(line)));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.trim_start().strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| ParseError::NoValue(short(line)))?;
    let value = parse_value(value_text)?;
    let timestamp_ms = match fields.next() {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| ParseError::BadTimestamp(t.to_string()))?,
        ),
        None => None,
    };
    if let Some(extra) = fields.next() {
        return Err(ParseError::Trailing(extra.to_string()));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parse `a="x",b="y"}` (after the `{`); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), LabelError> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let name_end = s
            .find(|c: char| !is_name_char(c))
            .ok_or(LabelError::Unterminated)?;
        let name = &s[..name_end];
        if name.is_empty() {
            return Err(LabelError::BadName(short(s)));
        }
        s = s[name_end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| LabelError::NoEquals { label: name.into() })?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| LabelError::NoQuote { label: name.into() })?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(LabelError::UnterminatedValue { label: name.into() }),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(LabelError::UnterminatedValue { label: name.into() }),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(LabelError::NoSeparator { label: name.into() });
        }
    }
}

pub fn parse_value(s: &str) -> Result<f64, BadValue> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| BadValue(s.to_string())),
    }
}

/// A value for evidence: integers without a fraction, others as Rust prints them.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the sample worker serves (`sample-worker/src/metrics.rs`).
    pub(crate) const SAMPLE: &str = "# HELP worker_up 1 while the worker process is running and serving metrics.\n# TYPE worker_up gauge\nworker_up 1\n# HELP active_tasks Tasks this worker process currently holds in active/.\n# TYPE active_tasks gauge\nactive_tasks 1\n# HELP task_completed_total Tasks moved to done/ since process start.\n# TYPE task_completed_total counter\ntask_completed_total 12\n# HELP task_failed_total Tasks moved to failed/ (malformed or failing) since process start.\n# TYPE task_failed_total counter\ntask_failed_total 2\n# HELP heartbeat_timestamp_seconds Unix time of the last successful heartbeat.json write (0 = never).\n# TYPE heartbeat_timestamp_seconds gauge\nheartbeat_timestamp_seconds 1795823941.123\n# HELP worker_info Static worker information.\n# TYPE worker_info gauge\nworker_info{worker=\"marie\",version=\"0.1.0\"} 1\n";

    #[test]
    fn parses_the_sample_worker_metrics() {
        let p = parse(SAMPLE);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.samples.len(), 6);
        assert_eq!(p.sum("active_tasks"), Some(1.0));
        assert_eq!(p.sum("task_failed_total"), Some(2.0));
        assert_eq!(p.sum("task_completed_total"), Some(12.0));
        assert_eq!(p.sum("heartbeat_timestamp_seconds"), Some(1795823941.123));
        assert_eq!(p.sum("nope"), None);
        let info = p.samples.iter().find(|s| s.name == "worker_info").unwrap();
        assert_eq!(
            info.labels,
            vec![
                ("worker".to_string(), "marie".to_string()),
                ("version".to_string(), "0.1.0".to_string())
            ]
        );
    }

    #[test]
    fn bad_lines_say_why_in_the_same_words() {
        for (line, want) in [
            ("9lives 1", "bad metric name in \"9lives 1\""),
            ("ok_no_value", "no value in \"ok_no_value\""),
            ("val x", "bad value \"x\""),
            ("val 1 notatime", "bad timestamp \"notatime\""),
            ("val 1 2 3", "unexpected \"3\" after the timestamp"),
            ("m{a=\"x\",b", "unterminated label set"),
            ("m{-} 1", "bad label name at \"-} 1\""),
            ("m{a \"x\"} 1", "expected '=' after label a"),
            ("m{a=x} 1", "expected '\"' for label a"),
            ("m{a=\"x} 1", "unterminated value of label a"),
            ("m{a=\"x\\", "unterminated value of label a"),
            ("m{a=\"x\" b=\"y\"} 1", "expected ',' or '}' after label a"),
        ] {
            assert_eq!(parse_line(line).unwrap_err().to_string(), want, "{line}");
        }
        assert_eq!(parse_value("1e999"), Err(BadValue("1e999".into())));
        assert!(matches!(
            parse_line("m{a=x} 1"),
            Err(ParseError::Labels(LabelError::NoQuote { .. }))
        ));
    }

    #[test]
    fn parses_labels_special_values_and_timestamps() {
        let text = "\
# a comment
task_failed_total{reason=\"timeout\"} 3 1700000000000
task_failed_total{reason=\"crash\",} 4
task_failed_total { reason = \"quote \\\" and \\\\ and \\n\" } 1e1
latency_bucket{le=\"+Inf\"} +Inf
weird NaN
neg -Inf
:colon:name 0.5

bad line here
bad{unterminated=\"x} 1
ok_no_value
val 1 notatime
";
        let p = parse(text);
        assert_eq!(p.sum("task_failed_total"), Some(17.0));
        let escaped = &p.samples[2].labels[0].1;
        assert_eq!(escaped, "quote \" and \\ and \n");
        assert_eq!(p.samples[0].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(p.samples[1].labels, vec![("reason".into(), "crash".into())]);
        assert_eq!(p.sum("latency_bucket"), Some(f64::INFINITY));
        assert!(p.sum("weird").unwrap().is_nan());
        assert_eq!(p.sum("neg"), Some(f64::NEG_INFINITY));
        assert_eq!(p.sum(":colon:name"), Some(0.5));
        assert_eq!(p.errors.len(), 4, "{:?}", p.errors);
        assert!(p.errors[0].starts_with("line 10:"), "{:?}", p.errors);
        assert_eq!(format_value(17.0), "17");
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1795823941.123), "1795823941.123");
    }
}
