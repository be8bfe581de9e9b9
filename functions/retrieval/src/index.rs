//! One tenant's BM25 index (tantivy, in RAM). ACL groups are indexed terms
//! and the ACL is a required clause of the query, so chunks a principal may
//! not see are filtered before ranking and never count against `k`.

use crate::{ChunkRecord, PUBLIC_GROUP};
use keel_core::chunking::Anchor;
use keel_core::KeelError;
use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, INDEXED, STORED, STRING, TEXT};
use tantivy::tokenizer::TokenStream;
use tantivy::{doc, Index, IndexReader, IndexWriter, TantivyDocument, Term};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SearchHit {
    pub doc_id: String,
    pub chunk_id: String,
    pub score: f32,
    pub text: String,
    pub title: Option<String>,
    pub anchor: Anchor,
}

pub struct TenantIndex {
    pub version: i64,
    index: Index,
    reader: IndexReader,
    text: Field,
    title: Field,
    acl: Field,
    ord: Field,
    records: Vec<ChunkRecord>,
}

/// The indexing arena (tantivy requires at least 15 MB per writer thread).
const INDEX_WRITER_MEMORY: usize = 20_000_000;

fn index_error(e: tantivy::TantivyError) -> KeelError {
    KeelError::Internal(format!("search index: {e}"))
}

impl TenantIndex {
    pub fn build(version: i64, records: Vec<ChunkRecord>) -> Result<Self, KeelError> {
        let mut schema = Schema::builder();
        let text = schema.add_text_field("text", TEXT);
        let title = schema.add_text_field("title", TEXT);
        let acl = schema.add_text_field("acl", STRING);
        let ord = schema.add_u64_field("ord", INDEXED | STORED);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter =
            index.writer_with_num_threads(1, INDEX_WRITER_MEMORY).map_err(index_error)?;
        for (i, r) in records.iter().enumerate() {
            let mut d = doc!(text => r.chunk.text.as_str(), ord => i as u64);
            if let Some(t) = &r.title {
                d.add_text(title, t);
            }
            if r.acl_groups.is_empty() {
                d.add_text(acl, PUBLIC_GROUP);
            }
            for g in &r.acl_groups {
                d.add_text(acl, g);
            }
            writer.add_document(d).map_err(index_error)?;
        }
        writer.commit().map_err(index_error)?;
        let reader = index.reader().map_err(index_error)?;
        Ok(Self { version, index, reader, text, title, acl, ord, records })
    }

    pub fn search(&self, query: &str, groups: &[&str], k: usize) -> Result<Vec<SearchHit>, KeelError> {
        // Terms through the field's own analyzer, OR-ed: plain BM25, no query syntax.
        let mut analyzer = self.index.tokenizer_for_field(self.text).map_err(index_error)?;
        let mut stream = analyzer.token_stream(query);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        words.sort();
        words.dedup();
        if words.is_empty() {
            return Ok(vec![]);
        }
        let mut terms: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for w in &words {
            for field in [self.text, self.title] {
                let term = Term::from_field_text(field, w);
                terms.push((Occur::Should, Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))));
            }
        }
        let acl: Vec<(Occur, Box<dyn Query>)> = groups
            .iter()
            .map(|g| {
                let term = Term::from_field_text(self.acl, g);
                (Occur::Should, Box::new(TermQuery::new(term, IndexRecordOption::Basic)) as Box<dyn Query>)
            })
            .collect();
        let query = BooleanQuery::new(vec![
            (Occur::Must, Box::new(BooleanQuery::new(terms))),
            (Occur::Must, Box::new(BooleanQuery::new(acl))),
        ]);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(k).order_by_score()).map_err(index_error)?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let stored: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let Some(r) = stored.get_first(self.ord).and_then(|v| v.as_u64()).and_then(|o| self.records.get(o as usize)) else {
                continue;
            };
            hits.push(SearchHit {
                doc_id: r.chunk.anchor.doc_id.clone(),
                chunk_id: r.chunk.chunk_id.clone(),
                score,
                text: r.chunk.text.clone(),
                title: r.title.clone(),
                anchor: r.chunk.anchor.clone(),
            });
        }
        Ok(hits)
    }
}
