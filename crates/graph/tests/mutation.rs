//! Mutated real models never panic the loader, shape inference or the cost model.
//!
//! `make soak` runs the same generator for many more cases (PROPTEST_CASES).

use effp_graph::{analyse, onnx::load_bytes};
use effp_testkit::{fixtures, zoo};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate { keep: usize },
    Splice { from: usize, to: usize, len: usize },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        (any::<usize>(), any::<usize>(), 1usize..256)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip { at, bits } => bytes[at % n] ^= bits,
        Mutation::Truncate { keep } => bytes.truncate(keep % n),
        Mutation::Splice { from, to, len } => {
            let from = from % n;
            let chunk: Vec<u8> = bytes[from..(from + len).min(n)].to_vec();
            let to = to % n;
            bytes.splice(to..to, chunk);
        }
        Mutation::Overwrite { at, bytes: new } => {
            for (i, b) in new.iter().enumerate() {
                let idx = (at + i) % n;
                bytes[idx] = *b;
            }
        }
    }
}

fn exercise(bytes: &[u8]) {
    // Any outcome is fine except a panic; errors must render.
    match load_bytes(bytes) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(model) => {
            if let Err(e) = analyse(model.clone(), None) {
                assert!(!e.to_string().is_empty());
            }
            let _ = effp_graph::onnx::to_bytes(&model);
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = fixtures::TINY
        .iter()
        .map(|f| std::fs::read(fixtures::path(f)).unwrap())
        .collect();
    s.extend(zoo::all().into_iter().map(|z| z.bytes));
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: soak_cases(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn mutated_models_never_panic(seed in any::<usize>(), mutations in proptest::collection::vec(mutation(), 1..6)) {
        thread_local!(static SEEDS: Vec<Vec<u8>> = seeds());
        let mut bytes = SEEDS.with(|s| s[seed % s.len()].clone());
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            apply(&mut bytes, m);
        }
        exercise(&bytes);
    }
}

/// 256 cases by default; `PROPTEST_CASES` raises it for soak runs.
fn soak_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
