//! int8 states through the optimizer (`Options::precision` with `state: Dtype::Int8`,
//! `docs/dtypes.md`): every stdlib rule on the CPU equals the interpreter bit for bit; a tensor
//! under 4096 elements keeps f32 states; checkpoints save the codes (U8) and block scales (F32)
//! and round-trip bit for bit; AdamW's state takes about 2 bytes per parameter.
#![cfg(feature = "compiler")]

#[path = "api_support/mod.rs"]
mod api_support;

use api_support::{has_matrix_stages, value};
use optc_kernel::{Dtype, Precision};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

const SIZES: [(&str, usize); 3] = [("w", 40 * 131), ("b", 37), ("e", 4096)];

fn int8(param: Dtype) -> Precision {
    Precision {
        param,
        state: Dtype::Int8,
        ..Precision::default()
    }
}

fn optimizer(rule: &str, target: Target, prec: Precision) -> Optimizer {
    api_support::optimizer(
        rule,
        target,
        prec,
        &[("w", &[40, 131]), ("b", &[37]), ("e", &[4096])],
    )
}

/// Steps `opt` `steps` times (f32 parameters) from the same data; returns the parameters.
fn train(opt: &mut Optimizer, params: &mut [Vec<f32>], from: u64, steps: u64) {
    for t in from..from + steps {
        let grads: Vec<Vec<f32>> = SIZES
            .iter()
            .enumerate()
            .map(|(k, &(_, n))| (0..n).map(|i| value(100 + 7 * t + k as u64, i)).collect())
            .collect();
        let updates: Vec<Update<'_>> = params
            .iter_mut()
            .zip(&grads)
            .zip(SIZES)
            .map(|((p, g), (name, _))| Update::new(name, p, g))
            .collect();
        opt.step(updates).expect("step");
    }
}

fn start() -> Vec<Vec<f32>> {
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &(_, n))| (0..n).map(|i| value(k as u64, i)).collect())
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter()
        .map(|v| if v.is_nan() { 0x7FC0_0000 } else { v.to_bits() })
        .collect()
}

#[test]
fn every_stdlib_rule_on_the_cpu_equals_the_interpreter_with_int8_states() {
    for name in optc_compiler::stdlib::names() {
        // (bf16 parameters with int8 states: tests/cpu_int8.rs, on the CPU kernels.)
        {
            let prec = int8(Dtype::F32);
            let mut cpu = optimizer(name, Target::Cpu, prec);
            let mut interp = optimizer(name, Target::Interp, prec);
            let mut pc = start();
            let mut pi = start();
            train(&mut cpu, &mut pc, 0, 3);
            train(&mut interp, &mut pi, 0, 3);
            for ((a, b), (p, _)) in pc.iter().zip(&pi).zip(SIZES) {
                if p == "w" && has_matrix_stages(name) {
                    // The CPU's Newton-Schulz products are not the interpreter's bit for bit:
                    // the matrix agrees to 1e-5 (its update is ~3e-3); its states (momentum,
                    // before the matrix program) exactly, below.
                    let d = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max);
                    assert!(d <= 1e-5, "{name}: parameter w off by {d}");
                } else {
                    assert_eq!(bits(a), bits(b), "{name}: parameter {p}");
                }
                let (sa, sb) = (cpu.states(p).expect("s"), interp.states(p).expect("s"));
                assert_eq!(sa.len(), sb.len());
                for ((na, va), (nb, vb)) in sa.iter().zip(&sb) {
                    assert_eq!(na, nb);
                    if na.starts_with("matrix_out") {
                        // What a matrix program wrote (Newton-Schulz's result, f32): to 1e-4 of
                        // its largest value, as the products differ in rounding.
                        let top = vb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let d = va
                            .iter()
                            .zip(vb)
                            .map(|(x, y)| (x - y).abs())
                            .fold(0.0, f32::max);
                        assert!(d <= 1e-4 * top, "{name}: state {p}.{na} off by {d}");
                        continue;
                    }
                    assert_eq!(bits(va), bits(vb), "{name}: state {p}.{na}");
                }
            }
            if !has_matrix_stages(name) {
                assert_eq!(
                    cpu.to_bytes().expect("cpu"),
                    interp.to_bytes().expect("interp"),
                    "{name}: checkpoints"
                );
            }
        }
    }
}

#[test]
fn checkpoints_save_codes_and_scales_and_round_trip_bit_for_bit() {
    let mut a = optimizer("adamw", Target::Cpu, int8(Dtype::F32));
    let mut pa = start();
    train(&mut a, &mut pa, 0, 2);
    let bytes = a.to_bytes().expect("save");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    for (key, dtype, shape) in [
        ("w.m", safetensors::Dtype::U8, vec![40, 131]),
        ("w.v", safetensors::Dtype::U8, vec![40, 131]),
        ("w.m.absmax", safetensors::Dtype::F32, vec![21]),
        ("e.v.absmax", safetensors::Dtype::F32, vec![16]),
        // A tensor under 4096 elements keeps f32 states.
        ("b.m", safetensors::Dtype::F32, vec![37]),
    ] {
        let t = st.tensor(key).unwrap_or_else(|_| panic!("{key}"));
        assert_eq!((t.dtype(), t.shape()), (dtype, &shape[..]), "{key}");
    }
    assert!(st.tensor("b.m.absmax").is_err());
    // The scales are the absmax of each block of the state's values, with the sign bit set
    // where a block has a negative value (m), never for v (a second moment).
    let states = a.states("w").expect("states");
    let scales = |k: &str| -> Vec<f32> {
        st.tensor(k)
            .expect(k)
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for (name, values) in &states {
        let s = scales(&format!("w.{name}.absmax"));
        for (b, block) in values.chunks(256).enumerate() {
            // The values loaded: the absmax element is map[code] · absmax, with map[code] 1 (the
            // unsigned map and the signed map's top) or the signed map's bottom, -0.9929...
            let loaded_max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                loaded_max <= s[b].abs() && loaded_max >= 0.99 * s[b].abs(),
                "w.{name} block {b}: {loaded_max} vs {}",
                s[b]
            );
            if block.iter().any(|&x| x < 0.0) {
                assert!(s[b].is_sign_negative(), "w.{name} block {b}");
            }
        }
        if *name == "v" {
            assert!(s.iter().all(|x| x.is_sign_positive()));
        }
    }
    let mut b = optimizer("adamw", Target::Cpu, int8(Dtype::F32));
    b.load_bytes(&bytes).expect("load");
    assert_eq!(b.to_bytes().expect("save again"), bytes);
    // Both continue identically.
    let mut pb = pa.clone();
    train(&mut a, &mut pa, 2, 2);
    train(&mut b, &mut pb, 2, 2);
    assert_eq!(pa, pb);
    assert_eq!(a.to_bytes().expect("a"), b.to_bytes().expect("b"));
    // A checkpoint of f32 states does not load where the states are int8.
    let mut f = optimizer("adamw", Target::Cpu, Precision::default());
    train(&mut f, &mut start(), 0, 1);
    let e = b
        .load_bytes(&f.to_bytes().expect("f32"))
        .expect_err("dtype mismatch");
    assert!(e.to_string().contains("expected U8"), "{e}");
}

#[test]
fn adamw_int8_state_takes_about_two_bytes_per_parameter() {
    let mut opt = Optimizer::with_options(
        Rule::stdlib("adamw").expect("adamw"),
        Options {
            precision: int8(Dtype::F32),
            ..Options::default()
        },
    )
    .expect("adamw");
    let n = 1 << 20;
    opt.add_param("w", &[n]).expect("add");
    let before = opt.state_bytes();
    let mut p = vec![0.5f32; n];
    let g: Vec<f32> = (0..n).map(|i| value(1, i)).collect();
    opt.step([Update::new("w", &mut p, &g)]).expect("step");
    let after = opt.state_bytes();
    // Two states of one code byte per element and one f32 scale per 256: 2 + 8/256.
    let want = 2 * (n + 4 * n / 256);
    assert_eq!(before, (want, n));
    assert_eq!(after, (want, n));
    assert!((want as f64 / n as f64) <= 2.1);
}
