//! The search space of `optc tune`: one `--space NAME=log:LO:HI` or `NAME=lin:LO:HI` per hyper.
//! Takes the argument; gives a [`Dimension`] that samples values from a [`Pcg32`], rounded to
//! three significant digits so that a setting prints short and is reproduced exactly.

use serde::Serialize;

use crate::compare::rng::Pcg32;
use crate::compare::CompareError;

/// How a dimension is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Log-uniform in `[lo, hi]` (`lo > 0`).
    Log,
    /// Uniform in `[lo, hi]`.
    Lin,
}

/// One hyper's range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dimension {
    /// The hyper.
    pub name: String,
    /// How it is sampled.
    pub scale: Scale,
    /// The lower bound.
    pub lo: f64,
    /// The upper bound.
    pub hi: f64,
}

impl Dimension {
    /// Parses `NAME=log:LO:HI` or `NAME=lin:LO:HI`.
    pub fn parse(arg: &str) -> Result<Dimension, CompareError> {
        let bad = |why: &str| {
            CompareError::Usage(format!(
                "`--space {arg}`: {why} (expected NAME=log:LO:HI or NAME=lin:LO:HI, e.g. `lr=log:1e-4:1e-1`)"
            ))
        };
        let (name, range) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("no name before `=`"));
        }
        let parts: Vec<&str> = range.split(':').map(str::trim).collect();
        let [scale, lo, hi] = parts.as_slice() else {
            return Err(bad("the range has not three parts"));
        };
        let scale = match *scale {
            "log" => Scale::Log,
            "lin" => Scale::Lin,
            other => {
                return Err(bad(&format!(
                    "unknown scale `{other}`; the scales are `log` and `lin`"
                )))
            }
        };
        let number = |s: &str| -> Result<f64, CompareError> {
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(bad(&format!("`{s}` is not a finite number"))),
            }
        };
        let (lo, hi) = (number(lo)?, number(hi)?);
        if lo >= hi {
            return Err(bad("LO must be less than HI"));
        }
        if scale == Scale::Log && lo <= 0.0 {
            return Err(bad("a log range needs LO > 0"));
        }
        Ok(Dimension {
            name: name.to_string(),
            scale,
            lo,
            hi,
        })
    }

    /// A value in `[lo, hi]`, rounded to three significant digits.
    pub fn sample(&self, rng: &mut Pcg32) -> f64 {
        let u = rng.next_f64();
        let v = match self.scale {
            Scale::Log => (self.lo.ln() + u * (self.hi.ln() - self.lo.ln())).exp(),
            Scale::Lin => self.lo + u * (self.hi - self.lo),
        };
        round3(v).clamp(self.lo, self.hi)
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = match self.scale {
            Scale::Log => "log",
            Scale::Lin => "lin",
        };
        write!(f, "{}={scale}:{:?}:{:?}", self.name, self.lo, self.hi)
    }
}

/// `v` to three significant digits.
fn round3(v: f64) -> f64 {
    format!("{v:.2e}").parse().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_range_and_are_short() {
        let d = Dimension::parse("lr=log:1e-4:1e-1").expect("parses");
        let mut rng = Pcg32::new(3, 1);
        for _ in 0..1000 {
            let v = d.sample(&mut rng);
            assert!((1e-4..=1e-1).contains(&v), "{v}");
            assert_eq!(format!("{v:.2e}").parse::<f64>().ok(), Some(v));
        }
    }

    #[test]
    fn bad_ranges_are_errors() {
        for arg in [
            "lr",
            "=log:1:2",
            "lr=log:1",
            "lr=lgo:1e-4:1",
            "lr=log:0:1",
            "lr=lin:2:1",
            "lr=lin:a:1",
            "lr=lin:1:inf",
        ] {
            let e = Dimension::parse(arg).expect_err(arg).to_string();
            assert!(e.contains(&format!("`--space {arg}`")), "{e}");
        }
        let e = Dimension::parse("lr=lgo:1e-4:1")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("the scales are `log` and `lin`"), "{e}");
    }
}
