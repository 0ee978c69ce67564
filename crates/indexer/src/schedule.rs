//! When daemon runs start: a cron line, validated when the configuration loads.
//!
//! The `cron` crate reads 6- or 7-field lines (seconds first, optional years last) whose day-of-week is 1–7 for
//! Sunday–Saturday. People write 5-field crontab lines whose day-of-week is 0–7 with Sunday as 0 or 7, so a
//! 5-field line gets a `0` seconds field and its day-of-week numbers translated. One difference from Vixie cron
//! remains and is documented: when both day-of-month and day-of-week are restricted, both must match.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone};

/// A parsed schedule that remembers how it was written.
#[derive(Clone)]
pub struct Schedule {
    source: String,
    cron: cron::Schedule,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.source)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.source == other.source
    }
}

impl Schedule {
    /// Parses a 5-field crontab line, a 6/7-field line with seconds, or an `@hourly`-style shorthand.
    ///
    /// # Errors
    /// For a wrong number of fields or a field the `cron` crate rejects (the message says which line).
    pub fn parse(text: &str) -> anyhow::Result<Schedule> {
        let source = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let expression = if source.starts_with('@') {
            source.clone()
        } else {
            let fields: Vec<&str> = source.split(' ').filter(|f| !f.is_empty()).collect();
            match fields.len() {
                5 => format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], crontab_dow(fields[4])?),
                6 | 7 => source.clone(),
                n => bail!(
                    "{source:?} has {n} fields; expected 5 (minute hour day month weekday), or 6/7 with seconds first"
                ),
            }
        };
        let cron =
            cron::Schedule::from_str(&expression).with_context(|| format!("{source:?} is not a valid schedule"))?;
        // A schedule that never fires (30 February) would park the daemon for ever.
        if cron.upcoming(chrono::Utc).next().is_none() {
            bail!("{source:?} never fires");
        }
        Ok(Schedule { source, cron })
    }

    /// The line as written (whitespace normalised).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first firing strictly after `after`.
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.cron.after(after).next()
    }
}

/// Translates a crontab day-of-week field (0–7, Sunday = 0 or 7) into the `cron` crate's (1–7, Sunday = 1).
/// Names (`mon-fri`), `*` and `?` pass through.
fn crontab_dow(field: &str) -> anyhow::Result<String> {
    let day = |s: &str| -> anyhow::Result<u32> {
        let n: u32 = s.parse().with_context(|| format!("day of week {s:?} is not a number or a day name"))?;
        if n > 7 {
            bail!("day of week {n} is out of range (0-7)");
        }
        Ok(n % 7 + 1)
    };
    let numeric = |s: &str| s.chars().next().is_some_and(|c| c.is_ascii_digit());
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let step = step.map(|s| format!("/{s}")).unwrap_or_default();
        match range.split_once('-') {
            Some((a, b)) if numeric(a) && numeric(b) => {
                let (from, to) = (a.parse::<u32>().unwrap_or(8), b.parse::<u32>().unwrap_or(8));
                if from > 7 || to > 7 || from > to {
                    bail!("day-of-week range {range:?} is not within 0-7");
                }
                // Sunday at the end of a range (`5-7`) wraps to the start of the crate's week.
                if from == 0 && to == 7 {
                    out.push(format!("1-7{step}"));
                } else if to == 7 {
                    if !step.is_empty() {
                        bail!("day-of-week range {range:?} with a step is not supported; list the days");
                    }
                    out.push(format!("{}-7,1", from + 1));
                } else {
                    out.push(format!("{}-{}{step}", day(a)?, day(b)?.max(day(a)?)));
                }
            }
            _ if numeric(range) => out.push(format!("{}{step}", day(range)?)),
            _ => out.push(item.to_owned()),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Utc};

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        let naive = NaiveDate::from_ymd_opt(y, mo, d).and_then(|d| d.and_hms_opt(h, mi, s)).expect("valid date");
        Utc.from_utc_datetime(&naive)
    }

    /// `after` → the next firing, in UTC.
    fn check(line: &str, after: DateTime<Utc>, expected: DateTime<Utc>) {
        let schedule = Schedule::parse(line).unwrap_or_else(|e| panic!("{line}: {e:#}"));
        assert_eq!(schedule.next_after(&after), Some(expected), "{line}");
    }

    #[test]
    fn five_field_crontab_lines() {
        // 2026-11-27 is a Friday.
        let fri = at(2026, 11, 27, 10, 7, 30);
        check("*/15 * * * *", fri, at(2026, 11, 27, 10, 15, 0));
        check("0 * * * *", fri, at(2026, 11, 27, 11, 0, 0));
        check("30 2 * * *", fri, at(2026, 11, 28, 2, 30, 0));
        check("0 9 1 * *", fri, at(2026, 12, 1, 9, 0, 0));
        // Day of week: 0 and 7 are Sunday, 1-5 Monday to Friday, names pass through.
        check("0 0 * * 0", fri, at(2026, 11, 29, 0, 0, 0));
        check("0 0 * * 7", fri, at(2026, 11, 29, 0, 0, 0));
        check("0 0 * * 1", fri, at(2026, 11, 30, 0, 0, 0));
        check("0 12 * * 1-5", fri, at(2026, 11, 27, 12, 0, 0));
        check("0 0 * * 6", fri, at(2026, 11, 28, 0, 0, 0));
        check("0 0 * * 6-7", fri, at(2026, 11, 28, 0, 0, 0));
        check("0 0 * * 0-7", fri, at(2026, 11, 28, 0, 0, 0));
        check("0 0 * * 0,3", fri, at(2026, 11, 29, 0, 0, 0));
        check("0 0 * * mon-fri", fri, at(2026, 11, 30, 0, 0, 0));
        check("0 0 * * */2", fri, at(2026, 11, 28, 0, 0, 0));
    }

    #[test]
    fn six_and_seven_fields_and_shorthands() {
        let t = at(2026, 11, 27, 10, 7, 30);
        check("* * * * * *", t, at(2026, 11, 27, 10, 7, 31));
        check("*/10 * * * * *", t, at(2026, 11, 27, 10, 7, 40));
        check("0 0 0 1 1 * 2027", t, at(2027, 1, 1, 0, 0, 0));
        check("@hourly", t, at(2026, 11, 27, 11, 0, 0));
        check("@daily", t, at(2026, 11, 28, 0, 0, 0));
        check("  */15   *  * * * ", t, at(2026, 11, 27, 10, 15, 0));
        assert_eq!(Schedule::parse("  */15   *  * * * ").expect("valid").source(), "*/15 * * * *");
    }

    #[test]
    fn invalid_lines_are_refused_with_a_reason() {
        for (line, reason) in [
            ("", "0 fields"),
            ("* * *", "3 fields"),
            ("* * * * * * * *", "8 fields"),
            ("61 * * * *", "not a valid schedule"),
            ("* 24 * * *", "not a valid schedule"),
            ("* * * * 8", "out of range"),
            ("* * * * 5-2", "not within"),
            ("* * * * 5-7/2", "not supported"),
            ("0 0 30 2 *", "never fires"),
            ("@sometimes", "not a valid schedule"),
        ] {
            let err = format!("{:#}", Schedule::parse(line).expect_err(line));
            assert!(err.contains(reason), "{line}: {err}");
        }
    }
}
