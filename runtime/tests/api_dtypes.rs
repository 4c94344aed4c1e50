//! Storage dtypes through the optimizer (`Options::precision`, `docs/dtypes.md`): every stdlib
//! rule on the CPU equals the interpreter under every dtype setting; f32 master weights follow
//! the f32 optimizer exactly and the 16-bit parameter is the master rounded, every step;
//! stochastic rounding is unbiased where round to nearest loses the update; checkpoints keep
//! each state in its dtype and round-trip bit for bit; mismatched dtypes and unaligned bytes are
//! clear errors that change nothing; state bytes per parameter.
#![cfg(feature = "compiler")]

#[path = "api_support/mod.rs"]
mod api_support;

use api_support::{close, has_matrix_stages, value};
use half::bf16;
use optc_kernel::{Dtype, Precision};
use optc_runtime::buf::{BufMut, BufRef};
use optc_runtime::{Optimizer, Options, Rule, RuntimeError, Target, Update};

fn precision(param: Dtype, state: Dtype, master: bool, sr: Option<u64>) -> Precision {
    Precision {
        param,
        state,
        master_weights: master,
        stochastic_rounding: sr,
    }
}

fn optimizer(rule: &str, target: Target, prec: Precision) -> Optimizer {
    api_support::optimizer(rule, target, prec, &[("w", &[8, 131]), ("b", &[37])])
}

/// One parameter's data in the optimizer's dtype.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<half::f16>),
}

impl Data {
    fn new(d: Dtype, xs: impl Iterator<Item = f32>) -> Data {
        match d {
            Dtype::Bf16 => Data::Bf16(xs.map(bf16::from_f32).collect()),
            Dtype::F16 => Data::F16(xs.map(half::f16::from_f32).collect()),
            _ => Data::F32(xs.collect()),
        }
    }
    fn view(&mut self) -> BufMut<'_> {
        match self {
            Data::F32(x) => BufMut::F32(x),
            Data::Bf16(x) => BufMut::Bf16(x),
            Data::F16(x) => BufMut::F16(x),
        }
    }
    fn shared(&self) -> BufRef<'_> {
        match self {
            Data::F32(x) => BufRef::F32(x),
            Data::Bf16(x) => BufRef::Bf16(x),
            Data::F16(x) => BufRef::F16(x),
        }
    }
    fn to_f32(&self) -> Vec<f32> {
        self.shared().to_f32()
    }
}

/// Steps `opt` `steps` times from the same data for every optimizer; returns the parameters.
fn train(opt: &mut Optimizer, d: Dtype, steps: u64) -> Vec<Data> {
    let sizes = [("w", 8 * 131), ("b", 37)];
    let mut params: Vec<Data> = sizes
        .iter()
        .enumerate()
        .map(|(k, &(_, n))| Data::new(d, (0..n).map(|i| value(k as u64, i))))
        .collect();
    for t in 0..steps {
        let grads: Vec<Data> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(_, n))| Data::new(d, (0..n).map(|i| value(100 + 7 * t + k as u64, i))))
            .collect();
        let updates: Vec<Update<'_>> = params
            .iter_mut()
            .zip(&grads)
            .zip(sizes)
            .map(|((p, g), (name, _))| Update::typed(name, p.view(), g.shared()))
            .collect();
        opt.step(updates).expect("step");
    }
    params
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter()
        .map(|v| if v.is_nan() { 0x7FC0_0000 } else { v.to_bits() })
        .collect()
}

fn settings() -> Vec<Precision> {
    api_support::dtype_settings()
}

#[test]
fn every_stdlib_rule_on_the_cpu_equals_the_interpreter_under_every_setting() {
    for rule in optc_compiler::stdlib::names() {
        for prec in settings() {
            let mut cpu = optimizer(rule, Target::Cpu, prec);
            let mut interp = optimizer(rule, Target::Interp, prec);
            let a = train(&mut cpu, prec.param, 3);
            let b = train(&mut interp, prec.param, 3);
            let matrix = has_matrix_stages(rule);
            if matrix {
                for (x, y) in a.iter().zip(&b) {
                    close(
                        &x.to_f32(),
                        &y.to_f32(),
                        &format!("{rule} {prec:?}: parameters"),
                        "cpu",
                    );
                }
            } else {
                assert_eq!(a, b, "{rule} {prec:?}: parameters");
            }
            for name in ["w", "b"] {
                let (sa, sb) = (
                    cpu.states(name).expect("s"),
                    interp.states(name).expect("s"),
                );
                assert_eq!(sa.len(), sb.len());
                for ((n, x), (_, y)) in sa.iter().zip(&sb) {
                    let what = format!("{rule} {prec:?}: state {name}.{n}");
                    if matrix {
                        close(x, y, &what, "cpu");
                    } else {
                        assert_eq!(bits(x), bits(y), "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn master_weights_follow_the_f32_optimizer_and_the_param_is_the_master_rounded() {
    for (rule, d) in [
        ("adamw", Dtype::Bf16),
        ("lamb", Dtype::Bf16),
        ("sgd", Dtype::F16),
    ] {
        let mut mixed = optimizer(rule, Target::Cpu, precision(d, Dtype::F32, true, None));
        let mut full = optimizer(rule, Target::Cpu, Precision::default());
        mixed.set_hyper("lr", 0.01).expect("lr");
        full.set_hyper("lr", 0.01).expect("lr");
        let sizes = [("w", 8 * 131), ("b", 37)];
        let mut p16: Vec<Data> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(_, n))| Data::new(d, (0..n).map(|i| value(k as u64, i))))
            .collect();
        // The f32 optimizer starts from the same (16-bit) values and sees the same gradients.
        let mut p32: Vec<Vec<f32>> = p16.iter().map(Data::to_f32).collect();
        for t in 0..5u64 {
            let g16: Vec<Data> = sizes
                .iter()
                .enumerate()
                .map(|(k, &(_, n))| Data::new(d, (0..n).map(|i| value(50 + 3 * t + k as u64, i))))
                .collect();
            let g32: Vec<Vec<f32>> = g16.iter().map(Data::to_f32).collect();
            mixed
                .step(
                    p16.iter_mut()
                        .zip(&g16)
                        .zip(sizes)
                        .map(|((p, g), (n, _))| Update::typed(n, p.view(), g.shared())),
                )
                .expect("mixed step");
            full.step(
                p32.iter_mut()
                    .zip(&g32)
                    .zip(sizes)
                    .map(|((p, g), (n, _))| Update::new(n, p, g)),
            )
            .expect("f32 step");
            for ((name, _), (p, f)) in sizes.iter().zip(p16.iter().zip(&p32)) {
                let states = mixed.states(name).expect("states");
                let master = &states
                    .iter()
                    .find(|(s, _)| *s == "master")
                    .expect("a master state")
                    .1;
                assert_eq!(bits(master), bits(f), "{rule} step {t}: master == f32 run");
                let rounded: Vec<f32> = master.iter().map(|&x| d.round(x)).collect();
                assert_eq!(
                    bits(&p.to_f32()),
                    bits(&rounded),
                    "{rule} step {t}: p == round(master)"
                );
            }
        }
    }
}

#[test]
fn stochastic_rounding_is_unbiased_where_round_to_nearest_loses_the_update() {
    // 4096 bf16 ones, 1000 steps of -1e-4 each (a bf16 ulp at 1 is 2^-7 above and 2^-8 below,
    // so round to nearest never moves them); with stochastic rounding the mean lands within
    // 5σ (σ ≈ 1e-3, docs/dtypes.md) of the exact 0.9.
    for (d, sr) in [
        (Dtype::Bf16, None),
        (Dtype::Bf16, Some(42)),
        (Dtype::F16, Some(42)),
    ] {
        let options = Options {
            precision: precision(d, Dtype::F32, false, sr),
            ..Options::default()
        };
        let mut opt =
            Optimizer::with_options(Rule::stdlib("sgd").expect("sgd"), options).expect("opt");
        opt.set_hyper("lr", 1e-4).expect("lr");
        opt.add_param("x", &[4096]).expect("add");
        let mut p = Data::new(d, (0..4096).map(|_| 1.0));
        let g = Data::new(d, (0..4096).map(|_| 1.0));
        for _ in 0..1000 {
            opt.step([Update::typed("x", p.view(), g.shared())])
                .expect("step");
        }
        let x = p.to_f32();
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let exact = 1.0 - 1000.0 * f64::from(1e-4f32);
        match sr {
            None => assert!(
                x.iter().all(|&v| v == 1.0),
                "round to nearest moved: {mean}"
            ),
            Some(_) => assert!(
                (mean - exact).abs() < 5e-3,
                "{d}: mean {mean}, expected {exact}"
            ),
        }
    }
}

#[test]
fn checkpoints_keep_each_state_in_its_dtype_and_round_trip_bit_for_bit() {
    let prec = precision(Dtype::Bf16, Dtype::Bf16, true, None);
    let mut a = optimizer("adamw", Target::Cpu, prec);
    let pa = train(&mut a, Dtype::Bf16, 2);
    let bytes = a.to_bytes().expect("save");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert_eq!(
        st.tensor("w.m").expect("m").dtype(),
        safetensors::Dtype::BF16
    );
    assert_eq!(
        st.tensor("w.v").expect("v").dtype(),
        safetensors::Dtype::BF16
    );
    assert_eq!(
        st.tensor("w.master").expect("master").dtype(),
        safetensors::Dtype::F32
    );
    let mut b = optimizer("adamw", Target::Cpu, prec);
    b.load_bytes(&bytes).expect("load");
    assert_eq!(b.to_bytes().expect("save again"), bytes);
    // Both continue identically.
    let mut pb = pa.clone();
    let mut pa = pa;
    for (opt, p) in [(&mut a, &mut pa), (&mut b, &mut pb)] {
        let g: Vec<Data> = [8 * 131, 37]
            .iter()
            .map(|&n| Data::new(Dtype::Bf16, (0..n).map(|i| value(9, i))))
            .collect();
        let [w, bias] = &mut p[..] else { panic!() };
        opt.step([
            Update::typed("w", w.view(), g[0].shared()),
            Update::typed("b", bias.view(), g[1].shared()),
        ])
        .expect("step");
    }
    assert_eq!(pa, pb);
    assert_eq!(a.to_bytes().expect("a"), b.to_bytes().expect("b"));
    // A checkpoint of f32 states does not load where the states are bf16.
    let mut f = optimizer("adamw", Target::Cpu, Precision::default());
    train(&mut f, Dtype::F32, 1);
    let e = b
        .load_bytes(&f.to_bytes().expect("f32"))
        .expect_err("dtype mismatch");
    assert!(e.to_string().contains("expected BF16"), "{e}");
}

#[test]
fn a_mismatched_dtype_or_unaligned_bytes_is_a_clear_error_and_changes_nothing() {
    let mut opt = optimizer(
        "adamw",
        Target::Cpu,
        precision(Dtype::Bf16, Dtype::Bf16, false, None),
    );
    let mut w = vec![0.5f32; 8 * 131];
    let g = vec![0.1f32; 8 * 131];
    let e = opt
        .step([Update::new("w", &mut w, &g)])
        .expect_err("f32 for bf16");
    assert!(matches!(e, RuntimeError::BufferDtype { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "parameter `w`: the parameter is f32, but the optimizer stores it as bf16 (Options::precision)"
    );
    assert!(w.iter().all(|&x| x == 0.5));
    assert_eq!(opt.step_count("w").expect("t"), 0);
    // Bytes: an odd address for bf16, and an odd length.
    let mut raw = vec![0u8; 2 * 8 * 131 + 2];
    let graw = vec![0u8; 2 * 8 * 131];
    let e = Update::from_bytes_as("w", Dtype::Bf16, &mut raw[1..2 * 8 * 131 + 1], &graw)
        .expect_err("unaligned");
    assert!(e.to_string().contains("not 2-byte aligned"), "{e}");
    let e = Update::from_bytes_as("w", Dtype::Bf16, &mut raw[..3], &graw).expect_err("odd");
    assert!(
        e.to_string()
            .contains("not a whole number of 2-byte bf16 values"),
        "{e}"
    );
    let e = Update::from_bytes_as("w", Dtype::Int8, &mut raw[..4], &graw).expect_err("int8");
    assert!(e.to_string().contains("not int8"), "{e}");
    // Aligned bytes of the right dtype step.
    let mut wb: Vec<u16> = vec![bf16::from_f32(0.5).to_bits(); 8 * 131];
    let gb: Vec<u16> = vec![bf16::from_f32(0.1).to_bits(); 8 * 131];
    let (wbytes, gbytes): (&mut [u8], &[u8]) =
        (bytemuck::cast_slice_mut(&mut wb), bytemuck::cast_slice(&gb));
    opt.step([Update::from_bytes_as("w", Dtype::Bf16, wbytes, gbytes).expect("bytes")])
        .expect("step");
    assert!(wb.iter().all(|&b| bf16::from_bits(b).to_f32() < 0.5));
}

#[test]
fn state_bytes_per_parameter_follow_the_dtypes() {
    let per_param = |prec: Precision| {
        let opt = optimizer("adamw", Target::Cpu, prec);
        let (bytes, n) = opt.state_bytes();
        bytes as f64 / n as f64
    };
    assert_eq!(per_param(Precision::default()), 8.0);
    assert_eq!(
        per_param(precision(Dtype::Bf16, Dtype::Bf16, false, None)),
        4.0
    );
    assert_eq!(
        per_param(precision(Dtype::Bf16, Dtype::Bf16, true, None)),
        8.0
    );
    assert_eq!(
        per_param(precision(Dtype::Bf16, Dtype::F32, true, None)),
        12.0
    );
    // After a step, the allocated states say the same.
    let mut opt = optimizer(
        "adamw",
        Target::Cpu,
        precision(Dtype::Bf16, Dtype::Bf16, false, None),
    );
    train(&mut opt, Dtype::Bf16, 1);
    let (bytes, n) = opt.state_bytes();
    assert_eq!(bytes, 4 * n);
}

#[test]
fn bad_precision_options_are_clear_errors() {
    let build = |prec: Precision| {
        Optimizer::with_options(
            Rule::stdlib("adamw").expect("adamw"),
            Options {
                precision: prec,
                ..Options::default()
            },
        )
        .map(drop)
        .expect_err("refused")
        .to_string()
    };
    assert!(build(precision(Dtype::F32, Dtype::F32, true, None))
        .contains("--master-weights needs a 16-bit parameter"));
    assert!(build(precision(Dtype::F32, Dtype::F32, false, Some(1)))
        .contains("--stochastic-rounding needs a 16-bit parameter"));
    assert!(build(precision(Dtype::Bf16, Dtype::F16, false, None))
        .contains("states are f32, bf16 or int8"));
    assert!(build(precision(Dtype::Bf16, Dtype::F32, true, Some(1))).contains("without a master"));
}
