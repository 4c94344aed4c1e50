//! A Rust training loop driving optc's runtime: load the stdlib AdamW, put biases in a group
//! without weight decay, follow a learning-rate schedule (a hyper change, never a recompile),
//! step several tensors at once, then save the optimizer state and resume from it exactly.
//!
//! Run with `cargo run --release --example training_loop`.

use optc::{GroupId, Optimizer, Rule, Update};

/// A toy model: fit `params` to fixed targets under the loss 0.5 * ||p - target||^2, whose
/// gradient is `p - target`.
struct Model {
    names: Vec<&'static str>,
    params: Vec<Vec<f32>>,
    targets: Vec<Vec<f32>>,
}

impl Model {
    fn new() -> Model {
        let shapes: [(&str, usize); 4] = [
            ("fc1.weight", 64 * 32),
            ("fc1.bias", 64),
            ("fc2.weight", 10 * 64),
            ("fc2.bias", 10),
        ];
        let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        Model {
            names: shapes.iter().map(|s| s.0).collect(),
            params: shapes.iter().map(|s| vec![0.0; s.1]).collect(),
            targets: shapes.iter().map(|s| wave(s.1, 0.37)).collect(),
        }
    }

    fn grads(&self) -> (f32, Vec<Vec<f32>>) {
        let mut loss = 0.0;
        let grads = self
            .params
            .iter()
            .zip(&self.targets)
            .map(|(p, t)| {
                p.iter()
                    .zip(t)
                    .map(|(p, t)| {
                        loss += 0.5 * (p - t) * (p - t);
                        p - t
                    })
                    .collect()
            })
            .collect();
        (loss, grads)
    }
}

/// Linear warm-up for 20 steps, then cosine decay to 10 % of the peak.
fn lr_at(step: usize, total: usize) -> f64 {
    let peak = 0.05;
    if step < 20 {
        return peak * (step + 1) as f64 / 20.0;
    }
    let progress = (step - 20) as f64 / (total - 20) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// An AdamW optimizer for the model: weights in group 0, biases in a group without decay.
fn optimizer(model: &Model) -> Result<Optimizer, optc::RuntimeError> {
    let mut opt = Optimizer::new(Rule::stdlib("adamw")?)?;
    let no_decay = opt.add_group(&[])?;
    opt.set_group_hyper(no_decay, "weight_decay", 0.0)?;
    for (name, p) in model.names.iter().zip(&model.params) {
        let group = if name.ends_with("bias") {
            no_decay
        } else {
            GroupId::DEFAULT
        };
        opt.add_param_to(group, name, &[p.len()])?;
    }
    Ok(opt)
}

fn step(opt: &mut Optimizer, model: &mut Model) -> Result<f32, optc::RuntimeError> {
    let (loss, grads) = model.grads();
    let updates = model
        .names
        .iter()
        .zip(model.params.iter_mut())
        .zip(&grads)
        .map(|((name, p), g)| Update::new(name, p, g));
    opt.step(updates)?; // every tensor in one pass of the thread pool
    Ok(loss)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = 200;
    let mut model = Model::new();
    let mut opt = optimizer(&model)?;
    for s in 0..total {
        opt.set_hyper("lr", lr_at(s, total))?; // every group; no recompilation
        let loss = step(&mut opt, &mut model)?;
        if s % 40 == 0 {
            println!("step {s:3}  lr {:.4}  loss {loss:.4}", lr_at(s, total));
        }
    }
    println!(
        "kernels compiled: {} (one per flag set)",
        opt.compile_count()
    );

    // Save, restore into a fresh optimizer, and check that both continue identically.
    let path = std::env::temp_dir().join("optc-training-loop.safetensors");
    opt.save(&path)?;
    let mut resumed_model = Model {
        names: model.names.clone(),
        params: model.params.clone(),
        targets: model.targets.clone(),
    };
    let mut resumed = optimizer(&resumed_model)?;
    resumed.load(&path)?;
    println!(
        "restored: step count {} for fc1.weight, lr {}",
        resumed.step_count("fc1.weight")?,
        resumed.hyper(GroupId::DEFAULT, "lr")?
    );
    for _ in 0..5 {
        step(&mut opt, &mut model)?;
        step(&mut resumed, &mut resumed_model)?;
    }
    let same = model.params == resumed_model.params;
    println!("after 5 more steps, original and resumed runs agree exactly: {same}");
    let _ = std::fs::remove_file(&path);
    if !same {
        return Err("the resumed run diverged".into());
    }
    Ok(())
}
