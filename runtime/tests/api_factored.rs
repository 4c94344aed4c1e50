//! Factored kernels (Row and Col scopes, `[rows]`/`[cols]` states: stdlib `adafactor`) through the
//! optimizer: the CPU JIT (row form, FMA off) gives the interpreter's bits with 1, 2 and 3
//! threads and on a second run; states have their factored lengths; checkpoints and torch state
//! files round-trip them with their shapes. The shapes cover more than one `REDUCE_BLOCK` per row
//! (cols 4100), more than one `COL_BLOCK_ROWS` block (rows 130), a batch (3-D) and vectors.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

/// With `[300, 150]` the step is above `MIN_CHUNK`, so the row blocks run on several threads.
const SHAPES: [&[usize]; 6] = [
    &[130, 7],
    &[3, 70, 9],
    &[2, 4100],
    &[37],
    &[1, 1],
    &[300, 150],
];

type Run = (Vec<Vec<u32>>, Vec<Vec<(String, Vec<u32>)>>);

fn optimizer(target: Target, threads: usize) -> Optimizer {
    let options = Options {
        target,
        threads: Some(threads),
        allow_fma: false,
        flags: vec![("maximize".into(), true)],
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib("adafactor").expect("stdlib"), options).expect("opt");
    opt.set_hyper("weight_decay", 0.1).expect("hyper");
    for (i, s) in SHAPES.iter().enumerate() {
        opt.add_param(&format!("t{i}"), s).expect("add");
    }
    opt
}

fn steps(opt: &mut Optimizer, params: &mut [Vec<f32>], from: u32, count: u32) {
    for k in from..from + count {
        let grads: Vec<Vec<f32>> = params
            .iter()
            .enumerate()
            .map(|(i, p)| data(p.len(), 100 * k + i as u32))
            .collect();
        let names: Vec<String> = (0..params.len()).map(|i| format!("t{i}")).collect();
        let updates = names
            .iter()
            .zip(params.iter_mut())
            .zip(&grads)
            .map(|((n, p), g)| Update::new(n, p, g));
        opt.step(updates).expect("step");
    }
}

fn run(target: Target, threads: usize) -> Run {
    let mut opt = optimizer(target, threads);
    let mut params: Vec<Vec<f32>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| data(s.iter().product(), 7 + i as u32))
        .collect();
    steps(&mut opt, &mut params, 0, 3);
    let states = (0..SHAPES.len())
        .map(|i| {
            opt.states(&format!("t{i}"))
                .expect("states")
                .into_iter()
                .map(|(n, v)| (n.to_string(), bits(&v)))
                .collect()
        })
        .collect();
    (params.iter().map(|p| bits(p)).collect(), states)
}

#[test]
fn the_cpu_gives_the_interpreters_bits_for_factored_kernels_with_any_thread_count() {
    let want = run(Target::Interp, 1);
    // The states have their factored lengths: [rows] and [cols] per matrix, full for vectors.
    let lens: Vec<Vec<(String, usize)>> = want
        .1
        .iter()
        .map(|s| s.iter().map(|(n, v)| (n.clone(), v.len())).collect())
        .collect();
    let named = |pairs: &[(&str, usize)]| -> Vec<(String, usize)> {
        pairs.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    };
    assert_eq!(lens[0], named(&[("row_var", 130), ("col_var", 7)]));
    assert_eq!(lens[1], named(&[("row_var", 3 * 70), ("col_var", 3 * 9)]));
    assert_eq!(lens[2], named(&[("row_var", 2), ("col_var", 4100)]));
    assert_eq!(lens[3], named(&[("variance", 37)]));
    for threads in [1, 2, 3] {
        assert_eq!(run(Target::Cpu, threads), want, "{threads} threads");
    }
    assert_eq!(run(Target::Cpu, 2), want, "a second run");
}

#[test]
fn factored_states_round_trip_through_checkpoints_and_torch_state() {
    let mut params: Vec<Vec<f32>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| data(s.iter().product(), 7 + i as u32))
        .collect();
    let mut opt = optimizer(Target::Cpu, 2);
    steps(&mut opt, &mut params, 0, 2);
    let saved = opt.to_bytes().expect("checkpoint");
    let torch = opt.to_torch_bytes().expect("torch state");
    let st = safetensors::SafeTensors::deserialize(&torch).expect("torch file");
    assert_eq!(
        st.tensor("t1.row_var").expect("row_var").shape(),
        &[3, 70, 1]
    );
    assert_eq!(
        st.tensor("t1.col_var").expect("col_var").shape(),
        &[3, 1, 9]
    );
    assert_eq!(st.tensor("t3.variance").expect("variance").shape(), &[37]);
    let mut tail = params.clone();
    steps(&mut opt, &mut tail, 2, 2);
    for bytes_of in [0, 1] {
        let mut again = optimizer(Target::Cpu, 1);
        if bytes_of == 0 {
            again.load_bytes(&saved).expect("load checkpoint");
        } else {
            again.load_torch_bytes(&torch).expect("load torch state");
        }
        let mut resumed = params.clone();
        steps(&mut again, &mut resumed, 2, 2);
        let b = |x: &[Vec<f32>]| x.iter().map(|p| bits(p)).collect::<Vec<_>>();
        assert_eq!(b(&resumed), b(&tail), "resumed from format {bytes_of}");
    }
    // A torch file whose factored state has the parameter's full shape is refused.
    let mut wrong = optimizer(Target::Cpu, 1);
    let full = vec![0f32; 3 * 70 * 9];
    let step = 2f64.to_le_bytes();
    let views = vec![
        (
            "t1.step".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![], &step)
                .expect("view"),
        ),
        (
            "t1.row_var".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![3, 70, 9],
                bytemuck::cast_slice(&full),
            )
            .expect("view"),
        ),
    ];
    let bad = safetensors::serialize(views, None).expect("bytes");
    let err = wrong
        .load_torch_bytes(&bad)
        .expect_err("full-shape row_var");
    assert!(err.to_string().contains("expected F32 [3, 70, 1]"), "{err}");
}
