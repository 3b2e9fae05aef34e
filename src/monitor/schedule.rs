//! When a saved query runs: `every <duration>`, aligned to the interval (`every 5m`
//! runs at :00, :05, …, UTC), or a cron expression of 5 fields (6 with seconds first),
//! evaluated in the query's time zone so daylight-saving changes fall where a user in
//! that zone expects.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScheduleError {
    #[error(
        "schedule `{0}`: write `every <duration>` (every 30s, every 5m) or a cron expression of 5 fields, or 6 with seconds first ({1})"
    )]
    Bad(String, String),
    #[error("schedule `{0}`: the interval must be at least 1s and a whole number of seconds")]
    Interval(String),
    #[error("schedule `{0}`: a timezone applies to cron schedules only; `every` is aligned to UTC")]
    ZoneWithEvery(String),
}

/// A parsed schedule.
#[derive(Clone)]
pub enum Schedule {
    Every {
        interval: Duration,
        text: String,
    },
    Cron {
        cron: Box<Cron>,
        tz: Tz,
        text: String,
    },
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.describe() == other.describe()
    }
}

impl Schedule {
    /// Parses `every 5m` or a cron expression; `tz` is the cron's zone (UTC if none).
    pub fn parse(text: &str, tz: Option<Tz>) -> Result<Schedule, ScheduleError> {
        let text = text.trim();
        if let Some(every) = text.strip_prefix("every ") {
            if tz.is_some() {
                return Err(ScheduleError::ZoneWithEvery(text.into()));
            }
            let interval = humantime::parse_duration(every.trim())
                .map_err(|e| ScheduleError::Bad(text.into(), e.to_string()))?;
            if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
                return Err(ScheduleError::Interval(text.into()));
            }
            return Ok(Schedule::Every {
                interval,
                text: text.into(),
            });
        }
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::Bad(text.into(), format!("{fields} fields")));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| ScheduleError::Bad(text.into(), e.to_string()))?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz: tz.unwrap_or(Tz::UTC),
            text: text.into(),
        })
    }

    /// As written, with the zone of a cron schedule.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every { text, .. } => text.clone(),
            Schedule::Cron { text, tz, .. } if *tz == Tz::UTC => text.clone(),
            Schedule::Cron { text, tz, .. } => format!("{text} ({tz})"),
        }
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every { interval, .. } => {
                let step = i64::try_from(interval.as_micros()).ok()?;
                let us = t.timestamp_micros();
                let next = us.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                DateTime::from_timestamp_micros(next)
            }
            Schedule::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&tz.from_utc_datetime(&t.naive_utc()), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The latest scheduled time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every { interval, .. } => {
                let step = i64::try_from(interval.as_micros()).ok()?;
                let us = t.timestamp_micros();
                DateTime::from_timestamp_micros(us.div_euclid(step).checked_mul(step)?)
            }
            Schedule::Cron { cron, tz, .. } => cron
                .find_previous_occurrence(&tz.from_utc_datetime(&t.naive_utc()), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_is_aligned_to_its_interval() {
        let s = Schedule::parse("every 5m", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-03-01T12:03:10Z")),
            Some(at("2026-03-01T12:05:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-03-01T12:05:00Z")),
            Some(at("2026-03-01T12:10:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-03-01T12:05:00Z")),
            Some(at("2026-03-01T12:05:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-03-01T12:09:59.9Z")),
            Some(at("2026-03-01T12:05:00Z"))
        );
    }

    #[test]
    fn cron_with_or_without_seconds_in_a_zone_across_dst() {
        let five = Schedule::parse("0 9 * * *", Some(Tz::Europe__Berlin)).unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer (DST began
        // on 2026-03-29).
        assert_eq!(
            five.next_after(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T07:00:00Z"))
        );
        assert_eq!(
            five.next_after(at("2026-03-27T12:00:00Z")),
            Some(at("2026-03-28T08:00:00Z"))
        );
        let six = Schedule::parse("30 */5 * * * *", None).unwrap();
        assert_eq!(
            six.next_after(at("2026-03-01T12:00:31Z")),
            Some(at("2026-03-01T12:05:30Z"))
        );
        assert_eq!(
            six.latest_at_or_before(at("2026-03-01T12:05:30Z")),
            Some(at("2026-03-01T12:05:30Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        for bad in [
            "every",
            "every fortnight",
            "every 0s",
            "every 1500ms",
            "* * *",
            "61 * * * *",
        ] {
            let err = Schedule::parse(bad, None).unwrap_err().to_string();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
        let err = Schedule::parse("every 5m", Some(Tz::Europe__Berlin))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cron schedules only"), "{err}");
    }
}
