//! Latency distributions for simulated links, sampled from the seed's RNG.
//!
//! Reordering is not a separate fault: two messages on one link overtake each other whenever the
//! second draws a shorter latency than the first, which every distribution but `Constant` does.
//!
//! The transcendental functions the samplers need (`ln`, `exp`) are computed here from `+ - * /`
//! and `sqrt` only. Those are correctly rounded by IEEE 754 on every platform, whereas `f64::ln`
//! and `f64::exp` call the platform's libm, whose last bits may differ between machines; a seed
//! must replay the same run on a laptop and in CI.

use std::time::Duration;
use triarch_core::DetRng;

/// The longest any message spends on a link. Real transports retransmit rather than deliver a
/// packet minutes late, and the bound is what lets the settle period before the final reads drain
/// the network completely (a message arriving after the final reads could change a replica after
/// convergence was checked).
pub const LATENCY_MAX: Duration = Duration::from_millis(500);

/// How long one message takes on one directed link.
#[derive(Clone, Debug, PartialEq)]
pub enum LatencyDistribution {
    /// Always the same latency: FIFO links, no reordering.
    Constant { micros: u64 },
    /// Uniform in `min_micros..=max_micros`.
    Uniform { min_micros: u64, max_micros: u64 },
    /// Exponential with the given mean: mostly short, occasionally several times the mean.
    Exponential { mean_micros: u64 },
    /// Log-normal (`median * e^(sigma * Z)`, Z standard normal): the heavy right tail that
    /// measured datacenter latencies show.
    LogNormal { median_micros: u64, sigma: f64 },
}

impl LatencyDistribution {
    /// Draws one latency, clamped to `1 µs..=LATENCY_MAX`.
    pub fn sample(&self, rng: &mut DetRng) -> Duration {
        let micros = match *self {
            LatencyDistribution::Constant { micros } => micros,
            LatencyDistribution::Uniform {
                min_micros,
                max_micros,
            } => rng.between(min_micros, max_micros),
            LatencyDistribution::Exponential { mean_micros } => {
                // Inverse CDF; `1 - u` is in (0, 1], so the logarithm is finite.
                let u = 1.0 - rng.unit_f64();
                to_micros(-(mean_micros as f64) * ln(u))
            }
            LatencyDistribution::LogNormal {
                median_micros,
                sigma,
            } => to_micros(median_micros as f64 * exp(sigma * standard_normal(rng))),
        };
        let max = LATENCY_MAX.as_micros() as u64;
        Duration::from_micros(micros.clamp(1, max))
    }

    /// A distribution of a kind chosen by `kind` (0..4) with parameters drawn from `rng`: typical
    /// intra-datacenter latencies, 50 µs to a few ms, so that a request's round trips are short
    /// against the one-second coordinator timeout except in the tails.
    pub fn random(kind: u64, rng: &mut DetRng) -> Self {
        match kind % 4 {
            0 => LatencyDistribution::Constant {
                micros: rng.between(100, 2_000),
            },
            1 => {
                let min_micros = rng.between(50, 500);
                LatencyDistribution::Uniform {
                    min_micros,
                    max_micros: min_micros + rng.between(100, 5_000),
                }
            }
            2 => LatencyDistribution::Exponential {
                mean_micros: rng.between(200, 3_000),
            },
            _ => LatencyDistribution::LogNormal {
                median_micros: rng.between(200, 2_000),
                sigma: 0.3 + 0.9 * rng.unit_f64(),
            },
        }
    }
}

/// One-way latency between two regions is drawn per region pair from this range (ms): the
/// distance between datacenters of one continent, well below [`LATENCY_MAX`].
pub const INTER_REGION_MS_MIN: u64 = 20;
pub const INTER_REGION_MS_MAX: u64 = 60;

impl LatencyDistribution {
    /// A link inside one region (one datacenter) of a cluster of several regions: sub-millisecond,
    /// of the seed's distribution kind (`kind` as for [`LatencyDistribution::random`]). Only the
    /// exponential and log-normal tails pass a millisecond now and then.
    pub fn inside_region(kind: u64, rng: &mut DetRng) -> Self {
        match kind % 4 {
            0 => LatencyDistribution::Constant {
                micros: rng.between(100, 800),
            },
            1 => {
                let min_micros = rng.between(50, 300);
                LatencyDistribution::Uniform {
                    min_micros,
                    max_micros: min_micros + rng.between(100, 500),
                }
            }
            2 => LatencyDistribution::Exponential {
                mean_micros: rng.between(100, 400),
            },
            _ => LatencyDistribution::LogNormal {
                median_micros: rng.between(100, 500),
                sigma: 0.2 + 0.4 * rng.unit_f64(),
            },
        }
    }

    /// A link between two regions whose one-way latency is about `base_micros` (drawn per
    /// region pair from [`INTER_REGION_MS_MIN`]..=[`INTER_REGION_MS_MAX`]). A wide-area link has
    /// a floor (the distance), so every kind stays near it: constant, uniform up to a quarter
    /// above it, or (for the exponential and log-normal kinds) log-normal around it with a
    /// small sigma, whose tail still reorders messages.
    pub fn between_regions(kind: u64, base_micros: u64, rng: &mut DetRng) -> Self {
        match kind % 4 {
            0 => LatencyDistribution::Constant {
                micros: base_micros,
            },
            1 => LatencyDistribution::Uniform {
                min_micros: base_micros,
                max_micros: base_micros + rng.between(0, base_micros / 4),
            },
            _ => LatencyDistribution::LogNormal {
                median_micros: base_micros,
                sigma: 0.05 + 0.2 * rng.unit_f64(),
            },
        }
    }
}

fn to_micros(x: f64) -> u64 {
    // `as` saturates: NaN becomes 0 and +inf u64::MAX, both then clamped by the caller.
    x.round() as u64
}

/// A standard normal deviate by Marsaglia's polar method (needs only `ln` and `sqrt`).
fn standard_normal(rng: &mut DetRng) -> f64 {
    loop {
        let x = 2.0 * rng.unit_f64() - 1.0;
        let y = 2.0 * rng.unit_f64() - 1.0;
        let s = x * x + y * y;
        if s > 0.0 && s < 1.0 {
            return x * (-2.0 * ln(s) / s).sqrt();
        }
    }
}

const LN_2: f64 = std::f64::consts::LN_2;

/// Natural logarithm of a positive normal `x`, from basic arithmetic only (see module docs).
///
/// `x = m * 2^e` with `m` in `[sqrt(1/2), sqrt(2))`; then `ln m = 2 atanh(s)` with
/// `s = (m - 1) / (m + 1)`, `|s| < 0.172`, whose odd power series converges to below 1e-17 in
/// eleven terms.
fn ln(x: f64) -> f64 {
    assert!(x.is_normal() && x > 0.0, "ln of {x}");
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for k in 0..11 {
        sum += term / f64::from(2 * k + 1);
        term *= s2;
    }
    2.0 * sum + exponent as f64 * LN_2
}

/// `e^x` for `|x| < 700`, from basic arithmetic only (see module docs).
///
/// `x = k ln 2 + r` with `|r| <= ln 2 / 2`; the Taylor series of `e^r` to degree 20 is exact to
/// double precision there, and `2^k` is built from its bits.
fn exp(x: f64) -> f64 {
    assert!(x.abs() < 700.0, "exp of {x}");
    let k = (x / LN_2).round();
    let r = x - k * LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=20 {
        term *= r / f64::from(i);
        sum += term;
    }
    let scale = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    sum * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_match_the_platform_to_near_double_precision() {
        for &x in &[
            1e-300, 1e-9, 0.001, 0.3, 0.5, 0.999, 1.0, 1.5, 2.0, 10.0, 12345.678, 1e300,
        ] {
            let ours = ln(x);
            let theirs = x.ln();
            assert!(
                (ours - theirs).abs() <= 1e-13 * theirs.abs().max(1.0),
                "ln({x}) = {ours}, std {theirs}"
            );
        }
        for &x in &[-690.0, -20.0, -1.0, -0.1, 0.0, 0.25, 1.0, 3.7, 50.0, 690.0] {
            let ours = exp(x);
            let theirs = x.exp();
            assert!(
                (ours - theirs).abs() <= 1e-13 * theirs,
                "exp({x}) = {ours}, std {theirs}"
            );
        }
    }

    #[test]
    fn region_links_are_sub_millisecond_inside_and_tens_of_milliseconds_between() {
        let mut rng = DetRng::seed_from_u64(5);
        for kind in 0..4 {
            let inside = LatencyDistribution::inside_region(kind, &mut rng);
            let between = LatencyDistribution::between_regions(kind, 40_000, &mut rng);
            let mut inside_sum = 0;
            for _ in 0..2_000 {
                inside_sum += inside.sample(&mut rng).as_micros();
                let wan = between.sample(&mut rng);
                assert!(
                    wan >= Duration::from_millis(10) && wan < LATENCY_MAX,
                    "{wan:?}"
                );
            }
            assert!(
                inside_sum / 2_000 < 1_000,
                "kind {kind}: mean {} µs",
                inside_sum / 2_000
            );
        }
    }

    #[test]
    fn samples_stay_in_bounds_and_follow_their_distribution() {
        let mut rng = DetRng::seed_from_u64(3);
        let draws = 20_000u64;
        let mean = |d: &LatencyDistribution, rng: &mut DetRng| {
            (0..draws)
                .map(|_| d.sample(rng).as_micros() as u64)
                .sum::<u64>()
                / draws
        };
        let c = LatencyDistribution::Constant { micros: 700 };
        assert_eq!(mean(&c, &mut rng), 700);
        let u = LatencyDistribution::Uniform {
            min_micros: 100,
            max_micros: 300,
        };
        for _ in 0..1_000 {
            let s = u.sample(&mut rng).as_micros();
            assert!((100..=300).contains(&s));
        }
        let e = LatencyDistribution::Exponential { mean_micros: 1_000 };
        let m = mean(&e, &mut rng);
        assert!((900..1_100).contains(&m), "exponential mean {m}");
        // Log-normal mean is median * e^(sigma^2 / 2) = 1000 * e^0.125 ≈ 1133.
        let l = LatencyDistribution::LogNormal {
            median_micros: 1_000,
            sigma: 0.5,
        };
        let m = mean(&l, &mut rng);
        assert!((1_050..1_220).contains(&m), "log-normal mean {m}");
        let heavy = LatencyDistribution::LogNormal {
            median_micros: 400_000,
            sigma: 3.0,
        };
        for _ in 0..1_000 {
            assert!(heavy.sample(&mut rng) <= LATENCY_MAX);
        }
    }
}
