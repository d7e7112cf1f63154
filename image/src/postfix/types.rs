//! Which parameters Postfix knows (`parameters.txt`) and how it reads a parameter's value, from
//! the table `parameter-types.txt` (both made from the image's Postfix; their headers say how),
//! and the check that refuses what Postfix would die on. A `postconf` value Postfix cannot read is not refused by `postfix check` for most
//! parameters: the daemon that reads it dies with `fatal: bad numerical configuration` (or
//! `bad time value`, `bad boolean configuration`) when it starts, and so does every smtpd
//! after a reload. Both judges (the relay at start, the operator before writing) refuse it
//! first, with what Postfix expects.

use crate::error::{ConfigError, ConfigResult};

/// The table: `name type [min=N]` lines after a `#` header.
const PARAMETER_TYPES: &str = include_str!("parameter-types.txt");

/// The names of every parameter Postfix knows (`postconf -d` of the image's Postfix).
const POSTFIX_PARAMETERS: &str = include_str!("parameters.txt");

/// Whether Postfix knows parameter `name`.
pub fn is_postfix_parameter(name: &str) -> bool {
    POSTFIX_PARAMETERS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l == name)
}

/// What Postfix expects of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A C `int` (`sscanf("%d%c")`): optional sign and digits, at most 2147483647.
    Integer,
    /// A C `long` (`sscanf("%ld%c")`): byte counts such as `message_size_limit`.
    Size,
    /// Digits and an optional unit (`conv_time`); without one, `default_unit`.
    Time { default_unit: char },
    /// `yes` or `no`, in any case.
    Boolean,
}

/// How Postfix reads one parameter: its kind, the least value it accepts and the greatest
/// (seconds for a time), when it checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// Why a table line does not parse (the table is committed; a test reads every line).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("parameter-types.txt: bad line {line:?}")]
pub struct BadLine {
    pub line: String,
}

/// Parses one table line into its name and rule (`None` for `any`).
pub fn parse_line(line: &str) -> Result<(&str, Option<Rule>), BadLine> {
    let bad = || BadLine {
        line: line.to_string(),
    };
    let mut words = line.split_whitespace();
    let name = words.next().ok_or_else(bad)?;
    let kind = match words.next().ok_or_else(bad)? {
        "any" => return Ok((name, None)),
        "integer" => Kind::Integer,
        "size" => Kind::Size,
        "boolean" => Kind::Boolean,
        t => match t.strip_prefix("time:") {
            Some(u) if u.len() == 1 && "smhdw".contains(u) => Kind::Time {
                default_unit: u.chars().next().ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        },
    };
    let (mut min, mut max) = (None, None);
    for word in words {
        let (bound, n) = word.split_once('=').ok_or_else(bad)?;
        let n = n.parse::<i64>().map_err(|_| bad())?;
        let slot = match bound {
            "min" => &mut min,
            "max" => &mut max,
            _ => return Err(bad()),
        };
        if slot.replace(n).is_some() {
            return Err(bad());
        }
    }
    Ok((name, Some(Rule { kind, min, max })))
}

/// How Postfix reads `name`, when the table types it.
pub fn rule(name: &str) -> Option<Rule> {
    PARAMETER_TYPES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| parse_line(l).ok())
        .find(|(n, _)| *n == name)
        .and_then(|(_, rule)| rule)
}

/// Seconds in a time unit.
fn unit_seconds(unit: char) -> Option<i64> {
    match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86400),
        'w' => Some(604800),
        _ => None,
    }
}

/// An optional sign and the digits after it, as C's `strtol` takes them, and the rest.
/// `None` for the number when there are no digits.
fn leading_number(value: &str) -> (Option<i128>, &str) {
    let digits_start = usize::from(value.starts_with(['+', '-']));
    let digits_end = value[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(value.len(), |i| digits_start + i);
    let digits = &value[digits_start..digits_end];
    if digits.is_empty() {
        return (None, &value[digits_start..]);
    }
    // Longer than any i128 is out of range anyway: saturate.
    let magnitude = digits.parse::<i128>().unwrap_or(i128::MAX);
    let n = if value.starts_with('-') {
        -magnitude
    } else {
        magnitude
    };
    (Some(n), &value[digits_end..])
}

/// What a value of `kind` looks like, for messages.
fn expected(kind: Kind) -> String {
    match kind {
        Kind::Integer => "Postfix reads this parameter as an integer (e.g. 1000)".into(),
        Kind::Size => "Postfix reads this parameter as a whole number of bytes (e.g. 52428800)".into(),
        Kind::Time { default_unit } => format!(
            "Postfix reads this parameter as a time: a number with an optional unit s, m, h, d or w (e.g. 300s; without a unit, {default_unit})"
        ),
        Kind::Boolean => "Postfix reads this parameter as a boolean: yes or no".into(),
    }
}

/// The value Postfix would read (seconds for a time), or why it would die on it.
fn read(kind: Kind, value: &str) -> Result<i128, String> {
    let quoted = format!("{value:?}");
    match kind {
        Kind::Integer | Kind::Size => {
            let (n, rest) = leading_number(value);
            let max = if kind == Kind::Integer {
                i128::from(i32::MAX)
            } else {
                i128::from(i64::MAX)
            };
            match n {
                Some(n) if rest.is_empty() && (-max - 1..=max).contains(&n) => Ok(n),
                Some(_) if rest.is_empty() => Err(format!(
                    "{quoted} is out of range: {} of at most {max}",
                    expected(kind)
                )),
                _ => Err(format!(
                    "{quoted} is not a whole number: {}",
                    expected(kind)
                )),
            }
        }
        Kind::Time { default_unit } => {
            // conv_time: strtol, then the first character after the digits is the unit (what
            // follows it is not read); a negative or out-of-range number is refused.
            let (n, rest) = leading_number(value);
            let n = n.unwrap_or(0);
            let unit = rest.chars().next().unwrap_or(default_unit);
            let bad = || format!("{quoted} is not a time: {}", expected(kind));
            let seconds = unit_seconds(unit).ok_or_else(bad)?;
            let max = i128::from(i32::MAX);
            if n < 0 || n > max || (seconds > 1 && n >= max / i128::from(seconds)) {
                return Err(bad());
            }
            Ok(n * i128::from(seconds))
        }
        Kind::Boolean => {
            if value.eq_ignore_ascii_case("yes") {
                Ok(1)
            } else if value.eq_ignore_ascii_case("no") {
                Ok(0)
            } else {
                Err(format!("{quoted} is not yes or no: {}", expected(kind)))
            }
        }
    }
}

/// Refuses a value of parameter `name` that Postfix would die on: of the wrong type, or less
/// than the least it accepts. `field` names the entry. A value that refers to other
/// parameters (`$name`, `${name}`, `$(name)`) is left to Postfix, which expands it first;
/// parameters the table does not type take any value.
pub fn check(field: &str, name: &str, value: &str) -> ConfigResult<()> {
    let Some(rule) = rule(name) else {
        return Ok(());
    };
    // Postfix trims the value's surrounding white space when it reads main.cf.
    let value = value.trim();
    if value.contains('$') {
        return Ok(());
    }
    let n = read(rule.kind, value).map_err(|problem| ConfigError::invalid(field, problem))?;
    let shown = |bound: i64| match rule.kind {
        Kind::Time { .. } => format!("{bound}s"),
        _ => bound.to_string(),
    };
    if let Some(min) = rule.min {
        if n < i128::from(min) {
            return Err(ConfigError::invalid(
                field,
                format!("{value:?} is less than {}, the least Postfix accepts for this parameter (it would stop with \"invalid {name} parameter value\")", shown(min)),
            ));
        }
    }
    if let Some(max) = rule.max {
        if n > i128::from(max) {
            let days = match rule.kind {
                Kind::Time { .. } => format!(" ({} days)", max / 86400),
                _ => String::new(),
            };
            return Err(ConfigError::invalid(
                field,
                format!("{value:?} is more than {}{days}, the most Postfix accepts for this parameter (it would stop with \"invalid {name} parameter value\")", shown(max)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str, value: &str) -> String {
        check(&format!("spec.postconf.{name}"), name, value)
            .expect_err(value)
            .to_string()
    }

    #[test]
    fn every_line_of_the_table_parses() {
        let mut names = Vec::new();
        for line in PARAMETER_TYPES.lines().filter(|l| !l.starts_with('#')) {
            let (name, _) = parse_line(line).unwrap();
            assert!(is_postfix_parameter(name), "{name}");
            names.push(name);
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, each name once");
        assert_eq!(
            parse_line("a time:x"),
            Err(BadLine {
                line: "a time:x".into()
            })
        );
        assert!(parse_line("a integer min=").is_err());
    }

    /// Issue 24's values, which smtpd died on after a reload, and the common limits.
    #[test]
    fn the_issues_values_are_refused_naming_what_postfix_expects() {
        let e = refused("smtpd_recipient_limit", "1k");
        assert_eq!(
            e,
            "spec.postconf.smtpd_recipient_limit: \"1k\" is not a whole number: Postfix reads this parameter as an integer (e.g. 1000)"
        );
        let e = refused("smtpd_timeout", "5 minutes");
        assert!(
            e.contains("\"5 minutes\" is not a time")
                && e.contains("optional unit s, m, h, d or w"),
            "{e}"
        );
        let e = refused("smtpd_client_connection_count_limit", "fifty");
        assert!(e.contains("is not a whole number"), "{e}");
        let e = refused("message_size_limit", "lots");
        assert!(e.contains("whole number of bytes"), "{e}");
        let e = refused("smtpd_tls_received_header", "true");
        assert!(e.contains("yes or no"), "{e}");
        let e = refused("maximal_queue_lifetime", "5 days");
        assert!(e.contains("without a unit, d"), "{e}");
        // qmgr and bounce cap both lifetimes at 100 days: more and qmgr stops, so mail that
        // got its 250 would never leave nor return.
        let e = refused("maximal_queue_lifetime", "101d");
        assert_eq!(
            e,
            "spec.postconf.maximal_queue_lifetime: \"101d\" is more than 8640000s (100 days), the most Postfix accepts for this parameter (it would stop with \"invalid maximal_queue_lifetime parameter value\")"
        );
        assert!(refused("bounce_queue_lifetime", "15w").contains("more than 8640000s"));
        let e = refused("smtpd_recipient_limit", "0");
        assert!(e.contains("less than 1") && e.contains("invalid"), "{e}");
        let e = refused("smtpd_timeout", "0");
        assert!(e.contains("less than 1s"), "{e}");
        assert!(refused("smtpd_recipient_limit", "99999999999").contains("out of range"));
        assert!(refused("smtpd_recipient_limit", "").contains("not a whole number"));
        assert!(refused("smtpd_timeout", "-5s").contains("not a time"));
        assert!(refused("smtpd_timeout", "5S").contains("not a time"));
        assert!(refused("smtpd_timeout", "99999999999").contains("not a time"));
        for name in [
            "mailbox_size_limit",
            "queue_minfree",
            "smtpd_client_message_rate_limit",
            "default_process_limit",
            "smtp_destination_concurrency_limit",
        ] {
            assert!(refused(name, "1k").contains("whole number"), "{name}");
        }
        for name in [
            "maximal_queue_lifetime",
            "bounce_queue_lifetime",
            "minimal_backoff_time",
            "maximal_backoff_time",
            "smtp_helo_timeout",
            "command_time_limit",
            "relay_destination_rate_delay",
        ] {
            assert!(refused(name, "1 k").contains("not a time"), "{name}");
        }
    }

    /// What Postfix reads is accepted, as it reads it (tried on smtpd 3.7).
    #[test]
    fn what_postfix_reads_is_accepted() {
        for (name, value) in [
            ("smtpd_timeout", "300s"),
            ("smtpd_timeout", "300"),
            ("smtpd_timeout", "+5s"),
            ("smtpd_timeout", "5minutes"),
            ("smtpd_timeout", " 10d "),
            ("maximal_queue_lifetime", "100d"),
            ("bounce_queue_lifetime", "8640000s"),
            ("smtpd_recipient_limit", "+5"),
            ("smtpd_recipient_limit", "2147483647"),
            ("smtpd_client_connection_count_limit", "-1"),
            ("message_size_limit", "52428800"),
            ("message_size_limit", "99999999999"),
            ("smtpd_use_tls", "YES"),
            ("smtpd_use_tls", "No"),
            // References are expanded by Postfix first.
            (
                "smtpd_recipient_limit",
                "$default_destination_recipient_limit",
            ),
            ("smtpd_timeout", "${daemon_timeout}"),
            // Untyped: strings whose defaults look like numbers, and unknown names.
            ("smtpd_tls_loglevel", "1"),
            ("compatibility_level", "3.6"),
            (
                "default_destination_concurrency_negative_feedback",
                "1/concurrency",
            ),
            ("myhostname", "relay.example.net"),
        ] {
            check("p", name, value).unwrap_or_else(|e| panic!("{name} = {value}: {e}"));
        }
    }
}
