//! The PII detector on Presidio's synthetic set, and the injection guard on BIPIA and NotInject.

use super::*;

pub(crate) fn pii_eval() {
    let raw = std::fs::read_to_string(evaldata().join("pii-presidio-synth/synth_dataset_v2.json")).unwrap();
    let samples: Vec<Value> = serde_json::from_str(&raw).unwrap();
    let kind_of = |t: &str| match t {
        "EMAIL_ADDRESS" => Some(PiiKind::Email),
        "PHONE_NUMBER" => Some(PiiKind::Phone),
        "CREDIT_CARD" => Some(PiiKind::Card),
        "IBAN_CODE" => Some(PiiKind::Iban),
        "US_SSN" => Some(PiiKind::NationalId),
        "IP_ADDRESS" => Some(PiiKind::IpAddress),
        _ => None,
    };
    // (true positives, predicted, gold) per kind; a prediction is right when
    // it overlaps a gold span of the same kind.
    let mut counts: BTreeMap<PiiKind, (usize, usize, usize)> = BTreeMap::new();
    let mut found_gold: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let show_misses = std::env::var("KEEL_EVAL_SHOW_MISSES").is_ok();
    for s in &samples {
        let text = s["full_text"].as_str().unwrap();
        let gold: Vec<(PiiKind, usize, usize)> = s["spans"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| {
                let k = kind_of(g["entity_type"].as_str()?)?;
                // Dataset offsets are Python (code point) offsets, like ours.
                Some((k, g["start_position"].as_u64()? as usize, g["end_position"].as_u64()? as usize))
            })
            .collect();
        let predicted = detect(text);
        for p in &predicted {
            let e = counts.entry(p.kind).or_default();
            e.1 += 1;
            if gold.iter().any(|g| g.0 == p.kind && p.start < g.2 && g.1 < p.end) {
                e.0 += 1;
            } else if show_misses {
                let value: String = text.chars().skip(p.start).take(p.end - p.start).collect();
                println!("  false {:?}: {value:?}", p.kind);
            }
        }
        for g in &gold {
            counts.entry(g.0).or_default().2 += 1;
            if predicted.iter().any(|p| p.kind == g.0 && p.start < g.2 && g.1 < p.end) {
                *found_gold.entry(g.0).or_default() += 1;
            }
        }
    }
    println!("PII detection on presidio-research synth_dataset_v2 ({} samples); overlap match per entity type:", samples.len());
    for (kind, (tp, predicted, gold)) in counts {
        let recall_hits = found_gold.get(&kind).copied().unwrap_or(0);
        let precision = if predicted == 0 { f64::NAN } else { tp as f64 / predicted as f64 };
        let recall = if gold == 0 { f64::NAN } else { recall_hits as f64 / gold as f64 };
        println!("  {kind:?}: precision {precision:.3} ({tp}/{predicted}), recall {recall:.3} ({recall_hits}/{gold})");
    }
}

/// BIPIA's attacks inserted into its benign contexts (start, middle, end):
/// detected when a flag covers the inserted text. False positives: benign
/// contexts, and NotInject's benign prompts that contain trigger words.
/// The rules were written from the *train* attacks; test attacks are reported.
pub(crate) fn injection_eval() {
    use keel_routing::guard::scan;
    let bipia = evaldata().join("bipia-indirect-injection");
    let attacks = |file: &str| -> Vec<(String, String)> {
        let v = read_json(bipia.join(file));
        v.as_object().unwrap().iter().flat_map(|(cat, list)| {
            list.as_array().unwrap().iter().map(|a| (cat.clone(), a.as_str().unwrap().to_string())).collect::<Vec<_>>()
        }).collect()
    };
    let mut contexts: Vec<(&str, String)> = Vec::new();
    for task in ["email", "table", "code"] {
        for row in read_jsonl(bipia.join(task).join("test.jsonl")) {
            contexts.push((task, row["context"].as_str().unwrap_or("").to_string()));
        }
    }
    let benign_flagged = contexts.iter().filter(|(_, c)| !scan(c).is_empty()).count();
    println!("Injection guard (rules in functions/routing/src/guard.rs)");
    println!("  BIPIA benign contexts flagged (false positives): {benign_flagged}/{} = {:.1}%", contexts.len(),
        100.0 * benign_flagged as f64 / contexts.len() as f64);
    for split in ["train", "test"] {
        let text = attacks(&format!("text_attack_{split}.json"));
        let code = attacks(&format!("code_attack_{split}.json"));
        let mut per_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let (mut hit, mut total) = (0, 0);
        for (task, context) in &contexts {
            let set = if *task == "code" { &code } else { &text };
            for (category, attack) in set {
                for position in ["start", "middle", "end"] {
                    let at = match position {
                        "start" => 0,
                        "end" => context.len(),
                        _ => {
                            let mid = context.len() / 2;
                            context[mid..].find(". ").map(|i| mid + i + 2).filter(|i| context.is_char_boundary(*i)).unwrap_or(context.len())
                        }
                    };
                    let doc = format!("{}\n\n{attack}\n\n{}", &context[..at], &context[at..]);
                    let (s, e) = (at + 2, at + 2 + attack.len());
                    let found = scan(&doc).iter().any(|f| f.start < e && f.end > s);
                    let entry = per_category.entry(category.clone()).or_default();
                    entry.1 += 1;
                    total += 1;
                    if found {
                        entry.0 += 1;
                        hit += 1;
                    }
                }
            }
        }
        println!("  BIPIA {split} attacks inserted at start/middle/end of every context: detected {hit}/{total} = {:.1}%",
            100.0 * hit as f64 / total as f64);
        if split == "test" {
            for (category, (h, n)) in &per_category {
                println!("    {category}: {:.0}%", 100.0 * *h as f64 / *n as f64);
            }
        }
    }
    let piguard = evaldata().join("prompt-injection-labelled").join("piguard");
    let (mut flagged, mut n) = (0, 0);
    for file in ["NotInject_one.json", "NotInject_two.json", "NotInject_three.json"] {
        for row in read_json(piguard.join(file)).as_array().unwrap() {
            n += 1;
            flagged += usize::from(!scan(row["prompt"].as_str().unwrap_or("")).is_empty());
        }
    }
    println!("  NotInject benign prompts with trigger words flagged (false positives): {flagged}/{n} = {:.1}% \
        (over-defense accuracy {:.1}%)", 100.0 * flagged as f64 / n as f64, 100.0 * (n - flagged) as f64 / n as f64);
}
