//! How the benchmarks turn measurements into the figures they report, one way for all:
//! milliseconds to a tenth, the median and maximum of a set of rounds, and a baseline
//! compared with stator as a ratio to two decimals.

use std::time::Duration;

/// `x` rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` rounded to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A duration in milliseconds, to a tenth of a millisecond.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The median (the mean of the middle two for an even count), to one decimal, and the
/// maximum; `None` for no values.
pub fn median_max(mut values: Vec<f64>) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (Some(round1(median)), values.last().copied())
}

/// `numerator / denominator` to two decimals (how many times the baseline's figure is
/// stator's, or the other way round); `None` unless the denominator is above zero.
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| round2(numerator / denominator))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median_max(vec![]), (None, None));
        assert_eq!(median_max(vec![3.0, 1.0, 2.0]), (Some(2.0), Some(3.0)));
        assert_eq!(median_max(vec![4.0, 1.0, 2.0, 3.0]), (Some(2.5), Some(4.0)));
    }

    #[test]
    fn ratio_needs_a_positive_denominator() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 3.0), Some(0.33));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ms(Duration::from_micros(1_234_567)), 1234.6);
    }
}
