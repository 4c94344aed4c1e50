//! The 8x8 handwritten-digits data set (UCI "Optical Recognition of Handwritten Digits", test
//! part, 1,797 images, 10 classes, as shipped by scikit-learn), embedded in the binary.
//!
//! Takes `data/digits/digits.csv.gz` (64 pixel counts in 0..=16 then the label, per line); gives
//! the fixed split used by every run: the rows shuffled once by PCG32 (seed 0, stream 0) and cut
//! into [`DIGITS_TRAIN`] training and [`DIGITS_TEST`] test images. Pixels are scaled to [0, 1].

use std::io::Read;

use crate::compare::rng::Pcg32;
use crate::compare::CompareError;

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/digits/digits.csv.gz");

/// Pixels per image.
pub const DIGITS_FEATURES: usize = 64;
/// Number of classes.
pub const DIGITS_CLASSES: usize = 10;
/// Images in the training split.
pub const DIGITS_TRAIN: usize = 1437;
/// Images in the test split.
pub const DIGITS_TEST: usize = 360;

/// The data set, split.
#[derive(Debug, Clone)]
pub struct Digits {
    /// Training images, row-major `[DIGITS_TRAIN][64]`, in [0, 1].
    pub train_x: Vec<f64>,
    /// Training labels.
    pub train_y: Vec<u8>,
    /// Test images, row-major `[DIGITS_TEST][64]`, in [0, 1].
    pub test_x: Vec<f64>,
    /// Test labels.
    pub test_y: Vec<u8>,
}

impl Digits {
    /// Decode the embedded file and split it.
    pub fn load() -> Result<Self, CompareError> {
        let corrupt = |why: String| CompareError::Internal(format!("embedded digits data: {why}"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .map_err(|e| corrupt(e.to_string()))?;
        let mut rows: Vec<(Vec<f64>, u8)> = Vec::with_capacity(DIGITS_TRAIN + DIGITS_TEST);
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.trim().split(',').collect();
            if fields.len() != DIGITS_FEATURES + 1 {
                return Err(corrupt(format!("line {}: {} fields", i + 1, fields.len())));
            }
            let mut pixels = Vec::with_capacity(DIGITS_FEATURES);
            for f in &fields[..DIGITS_FEATURES] {
                let v: u8 = f
                    .parse()
                    .map_err(|_| corrupt(format!("line {}: bad pixel {f:?}", i + 1)))?;
                pixels.push(f64::from(v) / 16.0);
            }
            let label: u8 = fields[DIGITS_FEATURES]
                .parse()
                .ok()
                .filter(|&l| usize::from(l) < DIGITS_CLASSES)
                .ok_or_else(|| corrupt(format!("line {}: bad label", i + 1)))?;
            rows.push((pixels, label));
        }
        if rows.len() != DIGITS_TRAIN + DIGITS_TEST {
            return Err(corrupt(format!("{} rows", rows.len())));
        }
        Pcg32::new(0, 0).shuffle(&mut rows);
        let (train, test) = rows.split_at(DIGITS_TRAIN);
        let flat = |part: &[(Vec<f64>, u8)]| -> (Vec<f64>, Vec<u8>) {
            (
                part.iter().flat_map(|(x, _)| x.iter().copied()).collect(),
                part.iter().map(|&(_, y)| y).collect(),
            )
        };
        let (train_x, train_y) = flat(train);
        let (test_x, test_y) = flat(test);
        Ok(Digits {
            train_x,
            train_y,
            test_x,
            test_y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_the_documented_sizes_and_every_class_in_both_splits() {
        let d = Digits::load().expect("embedded data decodes");
        assert_eq!(d.train_x.len(), DIGITS_TRAIN * DIGITS_FEATURES);
        assert_eq!(d.test_y.len(), DIGITS_TEST);
        assert!(d.train_x.iter().all(|&x| (0.0..=1.0).contains(&x)));
        for c in 0..DIGITS_CLASSES as u8 {
            assert!(d.train_y.contains(&c) && d.test_y.contains(&c));
        }
        // 1,797 = 178 + 182 + 177 + 183 + 181 + 182 + 181 + 179 + 174 + 180 (per-class counts of the
        // file, checked with awk when it was committed).
        let zeros = d
            .train_y
            .iter()
            .chain(&d.test_y)
            .filter(|&&y| y == 0)
            .count();
        assert_eq!(zeros, 178);
    }
}
