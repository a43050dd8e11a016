//! Logs go to stderr (stdout is reserved for command output such as dry-run
//! bodies), filtered by `RUST_LOG` (default `info`; `--debug` logs at debug
//! level whatever it says), as text for people or as JSON, one object per
//! line, for log pipelines (`--log-format`).
//!
//! Both formats show the same fields, formatted the same way: a value is
//! written through its `Debug` or `Display`, so what keeps a secret out of the
//! text (the API token's `Debug` is redacted) keeps it out of the JSON too.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and each
    /// field at the top level, and `span` with the current span's fields.
    Json,
}

/// Installs the process's logger.
pub fn init(format: LogFormat, debug: bool) {
    // `--debug` asks for debug logs in so many words: it wins over RUST_LOG.
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let logger = subscriber(
        format,
        filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
    if let Err(e) = tracing::subscriber::set_global_default(logger) {
        eprintln!("failed to install the logger: {e}");
    }
}

/// The logger writing to `writer`; colours only in text to a terminal.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // Fields at the top level, where pipelines index them
        // (`environment`, `decision`, ...); the current span only, as the
        // text format prefixes it (the leader election's), not every parent.
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use serde_json::Value;

    use super::*;
    use crate::kosli::ApiToken;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const SECRET: &str = "s3cr3t-kosli-token-value";

    /// What `log` writes in `format` at level info.
    fn logged(format: LogFormat, log: impl FnOnce()) -> String {
        let out = Captured::default();
        let logger = subscriber(format, EnvFilter::new("info"), out.clone(), false);
        tracing::subscriber::with_default(logger, log);
        out.text()
    }

    fn some_events() {
        let token = ApiToken::new(SECRET);
        tracing::debug!("filtered out at info");
        tracing::info!(environment = "prod", pods = 3, bytes = 1234_u64, "reported");
        tracing::warn!(environment = "prod", ?token, "report failed: HTTP 503");
        let span = tracing::info_span!("leader_election", lease = "kosli-operator");
        span.in_scope(|| tracing::info!(identity = "pod-a", "leading"));
    }

    #[test]
    fn json_lines_parse_and_carry_level_message_and_fields() {
        let out = logged(LogFormat::Json, some_events);
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(
            lines.len(),
            3,
            "one object per event, debug filtered:\n{out}"
        );
        let reported = &lines[0];
        assert_eq!(reported["level"], "INFO");
        assert_eq!(reported["message"], "reported");
        assert_eq!(reported["environment"], "prod");
        assert_eq!(reported["pods"], 3);
        assert_eq!(reported["bytes"], 1234);
        assert!(
            reported["timestamp"]
                .as_str()
                .is_some_and(|t| t.contains('T')),
            "{reported}"
        );
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["message"], "report failed: HTTP 503");
        let leading = &lines[2];
        assert_eq!(leading["identity"], "pod-a");
        assert_eq!(leading["span"]["name"], "leader_election");
        assert_eq!(leading["span"]["lease"], "kosli-operator");
    }

    #[test]
    fn neither_format_logs_the_token() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = logged(format, some_events);
            assert!(
                out.contains("ApiToken(<redacted>)"),
                "{format:?}: the token is logged redacted:\n{out}"
            );
            assert!(!out.contains(SECRET), "{format:?} logs the token:\n{out}");
        }
    }

    #[test]
    fn text_stays_text() {
        let out = logged(LogFormat::Text, some_events);
        assert!(
            out.lines().next().is_some_and(|l| l.contains(" INFO ")
                && l.contains("reported")
                && l.contains("environment=\"prod\"")
                && !l.starts_with('{')),
            "{out}"
        );
    }

    #[test]
    fn log_format_is_a_global_flag_defaulting_to_text() {
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args).map(|c| c.log_format);
        assert_eq!(parse(&["kosli-operator", "crd"]).unwrap(), LogFormat::Text);
        assert_eq!(
            parse(&["kosli-operator", "--log-format", "json", "crd"]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            parse(&["kosli-operator", "crd", "--log-format=json"]).unwrap(),
            LogFormat::Json,
            "after the subcommand too"
        );
        assert!(parse(&["kosli-operator", "--log-format", "yaml", "crd"]).is_err());
    }
}
