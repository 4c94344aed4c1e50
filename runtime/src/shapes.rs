//! Named lists of parameter shapes for benchmarks (`optc bench --shapes`, the candle example).

/// The parameter shapes of GPT-2 small as in Hugging Face `GPT2LMHeadModel` (the LM head is tied
/// to `wte`): 2 embeddings, 12 blocks of 12 tensors, and the final layer norm.
pub fn gpt2_small() -> Vec<(String, Vec<usize>)> {
    let (d, ff, vocab, ctx) = (768, 3072, 50257, 1024);
    let mut shapes = vec![
        ("wte.weight".to_string(), vec![vocab, d]),
        ("wpe.weight".to_string(), vec![ctx, d]),
    ];
    for i in 0..12 {
        let block: [(&str, Vec<usize>); 12] = [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, ff]),
            ("mlp.c_fc.bias", vec![ff]),
            ("mlp.c_proj.weight", vec![ff, d]),
            ("mlp.c_proj.bias", vec![d]),
        ];
        shapes.extend(block.into_iter().map(|(n, s)| (format!("h.{i}.{n}"), s)));
    }
    shapes.push(("ln_f.weight".to_string(), vec![d]));
    shapes.push(("ln_f.bias".to_string(), vec![d]));
    shapes
}

#[cfg(test)]
mod tests {
    use super::gpt2_small;

    #[test]
    fn gpt2_small_preset_has_124m_parameters_in_148_tensors() {
        let shapes = gpt2_small();
        assert_eq!(shapes.len(), 148);
        let total: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(
            total, 124_439_808,
            "GPT-2 small with the LM head tied to wte"
        );
    }
}
