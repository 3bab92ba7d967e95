//! [`StaticEmbedder`]: one vector per vocabulary token, distilled from a sentence transformer by
//! `semroute setup static-<teacher>` (the model2vec recipe); a prompt is tokenised, its tokens'
//! vectors averaged and normalised. No ONNX Runtime call: microseconds per prompt.

use std::path::Path;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::tokenizer::{self, TextTokenizer};
use super::{checksum_of, sha256_hex, Embedder, Home};
use crate::error::{Error, Result};

/// Characters of a prompt looked at (about 1,000 tokens): a longer prompt's average is settled
/// long before, and the bound keeps a huge prompt from costing more than a few milliseconds.
const MAX_CHARS: usize = 4_000;

/// Tokens averaged at most.
const MAX_TOKENS: usize = 1_024;

/// A static embedding model installed by the set-up (`static-all-minilm-l6-v2`,
/// `static-multilingual-e5-small`).
///
/// ```no_run
/// use semroute::embed::{Embedder, StaticEmbedder};
///
/// let e = StaticEmbedder::load_installed("static-all-minilm-l6-v2")?;
/// let v = e.embed("Reformat this JSON so it is indented")?;
/// assert_eq!(v.len(), e.dim());
/// # Ok::<(), semroute::Error>(())
/// ```
pub struct StaticEmbedder {
    tokenizer: TextTokenizer,
    /// `rows x dim`, row = token id.
    table: Vec<f16>,
    rows: usize,
    dim: usize,
    unk: Option<u32>,
    model_id: String,
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedder").field("model_id", &self.model_id).field("rows", &self.rows).field("dim", &self.dim).finish()
    }
}

impl StaticEmbedder {
    /// Loads the static model installed as `name` under the default [`Home`].
    pub fn load_installed(name: &str) -> Result<Self> {
        Self::load(&Home::from_env().model_dir(name))
    }

    /// Loads a static model folder written by the set-up: `embeddings.f16`, `tokenizer.json`,
    /// `static.json`, `READY` and `SHA256SUMS` (the small files are checked against it, the table
    /// by its size).
    pub fn load(dir: &Path) -> Result<Self> {
        let missing = |what: &str| Error::ModelMissing { dir: dir.to_path_buf(), what: what.to_string() };
        let corrupt = |reason: String| Error::ModelCorrupt { dir: dir.to_path_buf(), reason };
        let ready = std::fs::read_to_string(dir.join("READY")).map_err(|_| missing("the READY marker (set-up never finished)"))?;
        if !ready.lines().any(|l| l == "kind=static") {
            return Err(corrupt("READY does not say kind=static: not a static model".into()));
        }
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).map_err(|_| missing("SHA256SUMS"))?;
        let read = |name: &str| {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(missing(name));
            }
            std::fs::read(&path).map_err(|e| Error::io(&path, e))
        };
        let (tokenizer_json, meta_json) = (read("tokenizer.json")?, read("static.json")?);
        for (name, data) in [("tokenizer.json", &tokenizer_json), ("static.json", &meta_json)] {
            let want = checksum_of(&sums, name).ok_or_else(|| corrupt(format!("SHA256SUMS lists no {name}")))?;
            if sha256_hex(data) != want {
                return Err(corrupt(format!("{name} does not match its checksum")));
            }
        }
        let meta: serde_json::Value = serde_json::from_slice(&meta_json).map_err(|e| corrupt(format!("static.json: {e}")))?;
        let (rows, dim) = match (meta["rows"].as_u64(), meta["dims"].as_u64()) {
            (Some(r), Some(d)) if r > 0 && (1..=4096).contains(&d) => (r as usize, d as usize),
            _ => return Err(corrupt("static.json lacks sensible `rows` and `dims`".into())),
        };
        let table = read_table(&dir.join("embeddings.f16"), rows * dim).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => corrupt(source.to_string()),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => missing("embeddings.f16"),
            e => e,
        })?;
        let mut tokenizer = tokenizer::from_bytes(&tokenizer_json).map_err(|e| corrupt(format!("tokenizer.json: {e}")))?;
        // The teacher's file pads every text to a fixed length: padding tokens must not join the
        // average. Truncation bounds the work (and the text is cut to MAX_CHARS before).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| corrupt(format!("tokenizer.json: {e}")))?;
        let unk = ["[UNK]", "<unk>"].iter().find_map(|t| tokenizer.token_to_id(t));
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let sum = checksum_of(&sums, "embeddings.f16").unwrap_or("unknown");
        Ok(StaticEmbedder { tokenizer, table, rows, dim, unk, model_id: format!("{name}-{}", &sum[..16.min(sum.len())]) })
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let end = text.char_indices().nth(MAX_CHARS).map_or(text.len(), |(i, _)| i);
        let encoding = self.tokenizer.encode(&text[..end], false).map_err(|e| Error::Embedding(format!("tokenising: {e}")))?;
        let mut sum = vec![0f32; self.dim];
        // A row widened at once (the processor's vector conversion), then added.
        let mut row32 = vec![0f32; self.dim];
        let mut n = 0usize;
        for (&id, &special) in encoding.get_ids().iter().zip(encoding.get_special_tokens_mask()) {
            if special == 1 || Some(id) == self.unk || id as usize >= self.rows {
                continue;
            }
            self.table[id as usize * self.dim..(id as usize + 1) * self.dim].convert_to_f32_slice(&mut row32);
            for (s, x) in sum.iter_mut().zip(&row32) {
                *s += x;
            }
            n += 1;
        }
        // No known token (an emoji, say): the zero vector, similar to nothing, so the router
        // finds the prompt unfamiliar.
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0 && norm > 0.0 {
            sum.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(sum)
    }
}

/// Reads `n` little-endian float16 values, in blocks (the table is not held twice in memory).
fn read_table(path: &Path, n: usize) -> Result<Vec<f16>> {
    use std::io::Read;
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len != 2 * n as u64 {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("embeddings.f16 has {len} bytes, expected {}", 2 * n));
        return Err(io(e));
    }
    let mut table = Vec::with_capacity(n);
    let mut block = vec![0u8; 1 << 20];
    while table.len() < n {
        let want = (2 * (n - table.len())).min(block.len());
        file.read_exact(&mut block[..want]).map_err(io)?;
        table.extend(block[..want].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])));
    }
    Ok(table)
}

impl Embedder for StaticEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn is_quick(&self) -> bool {
        true
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }
}
