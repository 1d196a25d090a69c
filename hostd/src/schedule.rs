//! Cron schedules of apps: parsing expressions (5 fields, or 6 with seconds first) and finding
//! the next tick. Pure logic; the firing lives in [`crate::apps`].

use chrono::{TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Most schedules one app may declare.
pub const SCHEDULES_PER_APP_MAX: usize = 64;
/// Longest cron expression accepted.
pub const EXPRESSION_BYTES_MAX: usize = 128;

/// One parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expression: String,
    cron: Cron,
}

impl Schedule {
    /// Parses `expression`; the error is shown to the user as it is.
    pub fn parse(expression: &str) -> Result<Self, String> {
        if expression.len() > EXPRESSION_BYTES_MAX {
            return Err(format!("cron expression longer than {EXPRESSION_BYTES_MAX} bytes"));
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser.parse(expression).map_err(|e| format!("invalid cron expression {expression:?}: {e}"))?;
        Ok(Self { expression: expression.to_owned(), cron })
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds, UTC), if any.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        // Ticks are whole seconds; from the whole second at or before `after_ms`, the next
        // tick is strictly after `after_ms` too.
        let after = Utc.timestamp_opt((after_ms / 1000) as i64, 0).single()?;
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        let next_ms = next.timestamp() as u64 * 1000;
        debug_assert!(next_ms > after_ms);
        Some(next_ms)
    }
}

/// Parses every expression of one app, refusing too many or any invalid one.
pub fn parse_all(expressions: &[String]) -> Result<Vec<Schedule>, String> {
    if expressions.len() > SCHEDULES_PER_APP_MAX {
        return Err(format!("an app may declare at most {SCHEDULES_PER_APP_MAX} cron schedules"));
    }
    expressions.iter().map(|e| Schedule::parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_give_the_next_tick() {
        let minute = Schedule::parse("*/5 * * * *").unwrap();
        // 2026-01-01T00:01:00Z → next is 00:05:00.
        let start = 1_767_225_660_000;
        assert_eq!(minute.next_after(start), Some(1_767_225_900_000));
        let seconds = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(seconds.next_after(start), Some(start + 2_000));
        assert_eq!(seconds.next_after(start + 1), Some(start + 2_000), "strictly after, on the grid");
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        assert!(Schedule::parse("every minute").unwrap_err().contains("invalid cron expression"));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(parse_all(&vec!["* * * * *".to_owned(); SCHEDULES_PER_APP_MAX + 1]).is_err());
    }
}
