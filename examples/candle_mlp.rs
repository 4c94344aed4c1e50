//! A candle MLP on the embedded 8x8 digits, trained twice from the same initial weights: once with
//! optc's stdlib `adamw` through `optc-candle`, once with `candle_nn::AdamW`, with the same hypers.
//! Prints both loss curves, their largest relative difference and both test accuracies.
//!
//! Run with `cargo run --release --example candle_mlp`. The test `candle/tests/mlp.rs` runs the
//! same code and checks that the curves agree and that the test accuracy is over 95 %.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use optc_candle::{Config, OptcOptimizer, Rule};
use std::io::Read;

/// Pixels per image, classes, hidden width, training images.
const FEATURES: usize = 64;
const CLASSES: usize = 10;
const HIDDEN: usize = 128;
const TRAIN: usize = 1437;

/// The hypers both optimizers use (candle's `ParamsAdamW` names them as torch does).
pub const HYPERS: ParamsAdamW = ParamsAdamW {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 1e-2,
};

/// Which optimizer trains the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// optc's stdlib `adamw`, through `optc_candle::OptcOptimizer`.
    Optc,
    /// `candle_nn::AdamW`.
    Candle,
}

/// A training run: the full-batch training loss before each step, and the final test accuracy.
#[derive(Debug)]
pub struct Run {
    /// `losses[k]` is the loss the `k+1`-th step's gradient comes from.
    pub losses: Vec<f32>,
    /// Fraction of the 360 test images classified right after the last step.
    pub test_accuracy: f64,
}

/// The digits split: the 1,797 images shuffled by a fixed generator, 1,437 for training.
pub struct Data {
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Vec<u32>,
}

/// SplitMix64: a small fixed generator for the shuffle and the initial weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

fn err(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

/// Decodes `data/digits/digits.csv.gz` (64 pixels in 0..=16, then the label, per line).
pub fn load_digits() -> candle_core::Result<Data> {
    const GZ: &[u8] = include_bytes!("../data/digits/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(GZ)
        .read_to_string(&mut text)
        .map_err(|e| err(format!("embedded digits: {e}")))?;
    let mut rows: Vec<(Vec<f32>, u32)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<u32> = line
            .trim()
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("embedded digits, line {}: {e}", i + 1)))?;
        let Some((&label, pixels)) = fields.split_last() else {
            continue;
        };
        if pixels.len() != FEATURES || label as usize >= CLASSES {
            return Err(err(format!("embedded digits, line {}: bad row", i + 1)));
        }
        rows.push((pixels.iter().map(|&v| v as f32 / 16.0).collect(), label));
    }
    let mut rng = Rng(0);
    for i in (1..rows.len()).rev() {
        rows.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let (train, test) = rows.split_at(TRAIN.min(rows.len()));
    let x = |part: &[(Vec<f32>, u32)]| {
        let flat: Vec<f32> = part.iter().flat_map(|r| r.0.iter().copied()).collect();
        Tensor::from_vec(flat, (part.len(), FEATURES), &Device::Cpu)
    };
    let labels = |part: &[(Vec<f32>, u32)]| part.iter().map(|r| r.1).collect::<Vec<u32>>();
    Ok(Data {
        train_x: x(train)?,
        train_y: Tensor::new(labels(train), &Device::Cpu)?,
        test_x: x(test)?,
        test_y: labels(test),
    })
}

/// `w1 [64, 128]`, `b1 [128]`, `w2 [128, 10]`, `b2 [10]`, uniform in ±1/sqrt(fan_in) as torch's
/// `nn.Linear` initializes them, from a fixed seed: the same values for every call.
fn init() -> candle_core::Result<Vec<Var>> {
    let mut rng = Rng(1);
    let shapes = [
        (vec![FEATURES, HIDDEN], FEATURES),
        (vec![HIDDEN], FEATURES),
        (vec![HIDDEN, CLASSES], HIDDEN),
        (vec![CLASSES], HIDDEN),
    ];
    shapes
        .into_iter()
        .map(|(shape, fan_in)| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
            Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?)
        })
        .collect()
}

fn logits(p: &[Var], x: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(p[0].as_tensor())?
        .broadcast_add(p[1].as_tensor())?
        .relu()?
        .matmul(p[2].as_tensor())?
        .broadcast_add(p[3].as_tensor())
}

/// One optimizer step, given the loss, for either optimizer.
type StepFn = Box<dyn FnMut(&Tensor) -> candle_core::Result<()>>;

/// Trains the MLP full batch for `steps` steps with `which` and `hypers`.
pub fn train(
    data: &Data,
    which: Which,
    hypers: &ParamsAdamW,
    steps: usize,
) -> candle_core::Result<Run> {
    let params = init()?;
    let mut opt: StepFn = match which {
        Which::Optc => {
            let rule = Rule::stdlib("adamw").map_err(candle_core::Error::wrap)?;
            let config = Config::new(rule)
                .hyper("lr", hypers.lr)
                .hyper("beta1", hypers.beta1)
                .hyper("beta2", hypers.beta2)
                .hyper("eps", hypers.eps)
                .hyper("weight_decay", hypers.weight_decay);
            let mut opt = OptcOptimizer::new(params.clone(), config)?;
            Box::new(move |loss| opt.backward_step(loss))
        }
        Which::Candle => {
            let mut opt = AdamW::new(params.clone(), hypers.clone())?;
            Box::new(move |loss| opt.backward_step(loss))
        }
    };
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let loss = candle_nn::loss::cross_entropy(&logits(&params, &data.train_x)?, &data.train_y)?;
        losses.push(loss.to_scalar::<f32>()?);
        opt(&loss)?;
    }
    let predicted: Vec<u32> = logits(&params, &data.test_x)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1()?;
    let right = predicted
        .iter()
        .zip(&data.test_y)
        .filter(|(a, b)| a == b)
        .count();
    Ok(Run {
        losses,
        test_accuracy: right as f64 / data.test_y.len().max(1) as f64,
    })
}

/// The largest relative difference between two loss curves.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs() / f64::from(y).abs().max(1e-30))
        .fold(0.0, f64::max)
}

#[allow(dead_code)] // the test includes this file as a module and calls `train` only
fn main() -> candle_core::Result<()> {
    let data = load_digits()?;
    let steps = 200;
    let optc = train(&data, Which::Optc, &HYPERS, steps)?;
    let candle = train(&data, Which::Candle, &HYPERS, steps)?;
    println!("step  optc adamw    candle_nn::AdamW");
    for k in (0..steps).step_by(20).chain([steps - 1]) {
        println!(
            "{:>4}  {:<12.6e}  {:.6e}",
            k + 1,
            optc.losses[k],
            candle.losses[k]
        );
    }
    println!(
        "largest relative loss difference over {steps} steps: {:.2e}",
        max_rel_diff(&optc.losses, &candle.losses)
    );
    println!(
        "test accuracy: optc {:.1} %, candle_nn {:.1} %",
        100.0 * optc.test_accuracy,
        100.0 * candle.test_accuracy
    );
    Ok(())
}
