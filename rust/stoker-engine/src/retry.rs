//! The retry delay after a failed attempt: exponential backoff with jitter.
//!
//! The computation is pure: the random draw is an argument, so the policy can
//! be tested exactly and the storage stays deterministic given its inputs.

/// The delay before the retry that follows the `n`-th counted failure (1 for
/// the first): `min(cap_ms, base_ms * 2^(n-1))`, reduced by the fraction
/// `jitter * u` of itself, where `u` is a uniform draw in `[0, 1)`.
///
/// Jitter only shortens the delay, so `cap_ms` stays a true upper bound and the
/// result lies in `[delay * (1 - jitter), delay]`. Every step saturates instead
/// of overflowing, so huge `n` simply yields the cap.
pub fn backoff_ms(n: u32, base_ms: i64, cap_ms: i64, jitter: f64, u: f64) -> i64 {
    let base_ms = base_ms.max(0);
    let cap_ms = cap_ms.max(0);
    let exponent = n.saturating_sub(1);
    // 2^62 is the largest power of two an i64 holds; beyond it the product is
    // past any cap anyway.
    let factor = if exponent >= 62 {
        i64::MAX
    } else {
        1i64 << exponent
    };
    let delay = base_ms.saturating_mul(factor).min(cap_ms);
    let fraction = (jitter * u).clamp(0.0, 1.0);
    if fraction == 0.0 || delay == 0 {
        return delay;
    }
    // The cast saturates and truncates toward zero, so the reduction never
    // exceeds the delay and zero jitter stays exact.
    let reduction = (delay as f64 * fraction) as i64;
    delay - reduction.clamp(0, delay)
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn doubles_from_the_base() {
        let delays: Vec<i64> = (1..=5)
            .map(|n| backoff_ms(n, 1000, 1_000_000, 0.0, 0.7))
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 16000]);
    }

    #[test]
    fn stops_at_the_cap() {
        assert_eq!(backoff_ms(4, 1000, 5000, 0.0, 0.0), 5000);
        assert_eq!(backoff_ms(40, 1000, 5000, 0.0, 0.0), 5000);
    }

    #[test]
    fn saturates_for_huge_attempts() {
        assert_eq!(backoff_ms(u32::MAX, 1000, i64::MAX, 0.0, 0.0), i64::MAX);
        assert_eq!(backoff_ms(64, i64::MAX, i64::MAX, 0.0, 0.0), i64::MAX);
    }

    #[test]
    fn zero_attempt_is_treated_as_first() {
        assert_eq!(backoff_ms(0, 250, 10_000, 0.0, 0.0), 250);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        for i in 0..100 {
            let u = f64::from(i) / 100.0;
            let delay = backoff_ms(3, 1000, 60_000, 0.5, u);
            assert!((2000..=4000).contains(&delay), "u={u} gave {delay}");
        }
        assert_eq!(backoff_ms(3, 1000, 60_000, 0.5, 0.0), 4000);
        assert_eq!(backoff_ms(3, 1000, 60_000, 0.5, 0.5), 3000);
        assert_eq!(backoff_ms(3, 1000, 60_000, 1.0, 0.999_999), 1);
    }

    #[test]
    fn zero_base_means_no_delay() {
        assert_eq!(backoff_ms(3, 0, 60_000, 0.3, 0.5), 0);
    }
}
