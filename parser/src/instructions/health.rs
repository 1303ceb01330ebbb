//! HEALTHCHECK: `NONE`, or `[flags] CMD <command>` with BuildKit's duration limits.

use crate::ast::Span;

use super::Cx;
use super::flags::{self, Kind, flag};
use super::util::{Nanos, parse_go_duration, parse_go_i32};

/// `HEALTHCHECK` as it goes into the image config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Healthcheck {
    pub span: Span,
    /// `["NONE"]`, `["CMD", exec args…]` or `["CMD-SHELL", "command line"]`.
    pub test: Vec<String>,
    /// Durations in nanoseconds; 0 means "not set" (the runtime default applies).
    pub interval: Nanos,
    pub timeout: Nanos,
    pub start_period: Nanos,
    pub start_interval: Nanos,
    pub retries: i32,
}

const FLAGS: &[flags::Spec] = &[
    flag("interval", Kind::String),
    flag("timeout", Kind::String),
    flag("start-period", Kind::String),
    flag("start-interval", Kind::String),
    flag("retries", Kind::String),
];

const MIN: Nanos = 1_000_000;

/// A healthcheck duration flag: empty or 0 means unset; otherwise at least 1ms.
pub(crate) fn parse_interval(name: &str, value: &str) -> Result<Nanos, String> {
    if value.is_empty() {
        return Ok(0);
    }
    let d = parse_go_duration(value)?;
    if d != 0 && d < MIN {
        return Err(format!(
            "Interval {} cannot be less than 1ms",
            crate::golang::quote(name)
        ));
    }
    Ok(d)
}

pub(crate) fn parse_healthcheck(cx: &mut Cx) -> Option<Healthcheck> {
    let node = cx.node;
    if !cx.at_least_one() {
        return None;
    }
    let typ = node.args[0].value.to_ascii_uppercase();
    let rest = &node.args[1..];
    let mut hc = Healthcheck {
        span: node.span,
        test: Vec::new(),
        interval: 0,
        timeout: 0,
        start_period: 0,
        start_interval: 0,
        retries: 0,
    };
    if typ == "NONE" {
        flags::ignored("HEALTHCHECK NONE", &node.flags, &mut cx.diags);
        if !rest.is_empty() {
            cx.error(
                "argument-count",
                rest[0].span.join(rest[rest.len() - 1].span),
                "HEALTHCHECK NONE takes no arguments",
                "remove everything after NONE",
            );
            return None;
        }
        hc.test = vec![typ];
        return Some(hc);
    }
    let fl = cx.flags(FLAGS);
    let mut ok = true;
    if typ == "CMD" {
        let mut cmd: Vec<String> = rest.iter().map(|w| w.value.clone()).collect();
        if !node.json && !cmd.is_empty() {
            cmd = vec![cmd.join(" ")];
        }
        if cmd.is_empty() {
            cx.error(
                "missing-argument",
                node.args[0].span,
                "Missing command after HEALTHCHECK CMD",
                "write the command to run, e.g. HEALTHCHECK CMD curl -f http://localhost/",
            );
            ok = false;
        }
        hc.test
            .push(if node.json { "CMD" } else { "CMD-SHELL" }.into());
        hc.test.extend(cmd);
    } else {
        cx.error(
            "healthcheck-type",
            node.args[0].span,
            format!(
                "Unknown type {} in HEALTHCHECK (try CMD)",
                crate::golang::quote(&typ)
            ),
            "write HEALTHCHECK CMD <command> or HEALTHCHECK NONE",
        );
        ok = false;
    }
    let durations: [(&str, &mut Nanos); 4] = [
        ("interval", &mut hc.interval),
        ("timeout", &mut hc.timeout),
        ("start-period", &mut hc.start_period),
        ("start-interval", &mut hc.start_interval),
    ];
    for (name, slot) in durations {
        let Some(u) = fl.get(name) else { continue };
        match parse_interval(name, &u.value.value) {
            Ok(d) => *slot = d,
            Err(e) => {
                cx.error(
                    "invalid-duration",
                    u.span,
                    e,
                    format!("write --{name}=<duration> such as 30s or 1m30s (at least 1ms, or 0 for the default)"),
                );
                ok = false;
            }
        }
    }
    if let Some(u) = fl.get("retries") {
        let v = &u.value.value;
        if !v.is_empty() {
            match parse_go_i32(v) {
                Ok(n) if n < 0 => {
                    cx.error(
                        "invalid-retries",
                        u.span,
                        format!("--retries cannot be negative ({n})"),
                        "write --retries=<count> with a count of 0 or more",
                    );
                    ok = false;
                }
                Ok(n) => hc.retries = n,
                Err(e) => {
                    cx.error(
                        "invalid-retries",
                        u.span,
                        e,
                        "write --retries=<count> with a whole number",
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(hc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_limits() {
        assert_eq!(
            parse_interval("interval", "50ns").unwrap_err(),
            "Interval \"interval\" cannot be less than 1ms"
        );
        assert_eq!(parse_interval("interval", "0ms"), Ok(0));
        assert_eq!(parse_interval("interval", "1ms"), Ok(1_000_000));
        assert_eq!(parse_interval("interval", ""), Ok(0));
        assert!(parse_interval("interval", "-1s").is_err());
        assert_eq!(
            parse_interval("timeout", "5").unwrap_err(),
            "time: missing unit in duration \"5\""
        );
    }
}
