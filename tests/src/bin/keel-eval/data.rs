//! The public data sets under `../shared/evaldata`, as the evaluations read them.

use super::*;

pub(crate) fn evaldata() -> PathBuf {
    std::env::var("KEEL_EVALDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/evaldata"))
}

pub(crate) struct Doc {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) text: String,
}

pub(crate) fn scifact_corpus() -> Vec<Doc> {
    let raw = std::fs::read_to_string(evaldata().join("beir-scifact/corpus.jsonl")).expect("SciFact corpus");
    raw.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Doc { id: v["_id"].as_str().unwrap().into(), title: v["title"].as_str().unwrap_or("").into(), text: v["text"].as_str().unwrap().into() }
        })
        .collect()
}

/// Query id → text.
pub(crate) fn scifact_queries() -> HashMap<String, String> {
    let raw = std::fs::read_to_string(evaldata().join("beir-scifact/queries.jsonl")).unwrap();
    raw.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["_id"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Query id → relevant doc ids, for `train` or `test`.
pub(crate) fn qrels(split: &str) -> BTreeMap<String, HashSet<String>> {
    let raw = std::fs::read_to_string(evaldata().join(format!("beir-scifact/qrels/{split}.tsv"))).unwrap();
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for line in raw.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 3 && f[2].trim() != "0" {
            out.entry(f[0].to_string()).or_default().insert(f[1].to_string());
        }
    }
    out
}

pub(crate) fn cranfield_corpus() -> Vec<Doc> {
    let raw = std::fs::read_to_string(evaldata().join("cranfield/cran.all.1400")).unwrap().replace("\r\n", "\n");
    let mut docs = Vec::new();
    for record in raw.split(".I ").skip(1) {
        let id = record.lines().next().unwrap_or("").trim().to_string();
        let field = |tag: &str| -> String {
            let Some(start) = record.find(&format!("\n.{tag}\n")) else { return String::new() };
            let rest = &record[start + 4..];
            let end = rest.find("\n.").unwrap_or(rest.len());
            rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        let text = field("W");
        if !text.is_empty() {
            docs.push(Doc { id: format!("cran-{id}"), title: field("T"), text });
        }
    }
    docs
}

pub(crate) fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

pub(crate) fn read_jsonl(path: PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}
