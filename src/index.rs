//! Nearest-neighbour search over exemplar vectors.
//!
//! [`NeighbourIndex`] is the seam: [`HnswIndex`] (approximate, `hnsw_rs`) is what the router uses;
//! [`ExactIndex`] (brute force) is the yardstick for recall and a fine choice for tiny sets.
//! Vectors are expected L2-normalised (as every [`Embedder`](crate::embed::Embedder) returns
//! them), so similarity is a dot product.
//!
//! ```
//! use semroute::index::{HnswIndex, NeighbourIndex};
//!
//! let vectors = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
//! let index = HnswIndex::build(&vectors)?;
//! let hits = index.search(&[1.0, 0.0], 2);
//! assert_eq!(hits[0].position, 0);
//! assert!((hits[0].similarity - 1.0).abs() < 1e-6);
//! assert_eq!(hits[1].position, 2);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

use crate::error::{Error, Result};

/// One search hit: the position of an exemplar in its set and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Position in the exemplar set (and in the vectors the index was built from).
    pub position: usize,
    /// Cosine similarity in `[-1, 1]`.
    pub similarity: f32,
}

/// Finds the `k` vectors most similar to a query, best first.
pub trait NeighbourIndex: Send + Sync {
    /// The `k` nearest hits (fewer if the index holds fewer), by decreasing similarity.
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit>;

    /// Number of indexed vectors.
    fn len(&self) -> usize;

    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cosine distance for unit vectors: `1 - a·b`, clamped so rounding never makes it negative
/// (hnsw_rs's own `DistDot` asserts on that and would panic).
#[derive(Debug, Default, Clone, Copy)]
struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).clamp(0.0, 2.0)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..].iter().zip(&b[chunks..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn check_vectors(vectors: &[Vec<f32>]) -> Result<usize> {
    let dim = vectors.first().map_or(0, Vec::len);
    if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
        return Err(Error::Index(format!("vector {i} has {} dimensions, vector 0 has {dim}", v.len())));
    }
    if let Some(i) = vectors.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
        return Err(Error::Index(format!("vector {i} holds a NaN or infinite value")));
    }
    Ok(dim)
}

/// Approximate search with a hierarchical navigable small-world graph (`hnsw_rs`).
pub struct HnswIndex {
    graph: Hnsw<'static, f32, UnitCosine>,
    len: usize,
    ef_search: usize,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex").field("len", &self.len).field("ef_search", &self.ef_search).finish()
    }
}

impl HnswIndex {
    /// Builds an index over `vectors` (position `i` is vector `i`), with settings that give
    /// recall near 1 up to 100k vectors: 24 links per node, ef 200 at build, 64 at search.
    pub fn build(vectors: &[Vec<f32>]) -> Result<Self> {
        Self::build_with(vectors, 24, 200, 64)
    }

    /// Builds with explicit HNSW parameters: `links` per node (max 256), `ef_construction`, and
    /// the default `ef_search` (raised to `k` when a search asks for more).
    pub fn build_with(vectors: &[Vec<f32>], links: usize, ef_construction: usize, ef_search: usize) -> Result<Self> {
        check_vectors(vectors)?;
        if !(2..=256).contains(&links) {
            return Err(Error::Index(format!("links per node must be within 2..=256, got {links}")));
        }
        let layers = 16;
        let graph = Hnsw::new(links, vectors.len().max(1), layers, ef_construction.max(links), UnitCosine);
        let data: Vec<(&Vec<f32>, usize)> = vectors.iter().zip(0..).collect();
        if data.len() >= 1000 {
            graph.parallel_insert(&data);
        } else {
            for (v, i) in data {
                graph.insert((v.as_slice(), i));
            }
        }
        let mut graph = graph;
        graph.set_searching_mode(true);
        Ok(HnswIndex { graph, len: vectors.len(), ef_search: ef_search.max(1) })
    }
}

impl NeighbourIndex for HnswIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        if self.len == 0 || k == 0 {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = self
            .graph
            .search(query, k, self.ef_search.max(k))
            .into_iter()
            .map(|n| Hit { position: n.d_id, similarity: 1.0 - n.distance })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        hits
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Exact search by scanning every vector.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    vectors: Vec<Vec<f32>>,
}

impl ExactIndex {
    /// Indexes `vectors` (position `i` is vector `i`).
    pub fn build(vectors: Vec<Vec<f32>>) -> Result<Self> {
        check_vectors(&vectors)?;
        Ok(ExactIndex { vectors })
    }
}

impl NeighbourIndex for ExactIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(position, v)| Hit { position, similarity: dot(query, v) })
            .collect();
        let k = k.min(hits.len());
        if k == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(k - 1, |a, b| b.similarity.total_cmp(&a.similarity));
        hits.truncate(k);
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        hits
    }

    fn len(&self) -> usize {
        self.vectors.len()
    }
}

/// Exemplar vectors cached on disk, one file per (embedding model, exemplar content) pair, so a
/// warm start does not re-embed. A file that is truncated, of another dimension or count, or
/// otherwise unreadable is treated as absent and rewritten.
#[derive(Debug, Clone)]
pub struct VectorCache {
    dir: PathBuf,
}

const MAGIC: &[u8; 8] = b"SRVEC01\n";

impl VectorCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VectorCache { dir: dir.into() }
    }

    fn path(&self, model_id: &str, content_hash: &str) -> PathBuf {
        let safe: String = model_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.dir.join(format!("{safe}-{}.vec", &content_hash[..content_hash.len().min(32)]))
    }

    /// The cached vectors, if a valid file for this key holds exactly `count` vectors of `dim`.
    pub fn load(&self, model_id: &str, content_hash: &str, count: usize, dim: usize) -> Option<Vec<Vec<f32>>> {
        let mut file = std::fs::File::open(self.path(model_id, content_hash)).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let header = 8 + 8 + 8;
        if bytes.len() != header + count * dim * 4 || &bytes[..8] != MAGIC {
            return None;
        }
        let n = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
        let d = u64::from_le_bytes(bytes[16..24].try_into().ok()?) as usize;
        if n != count || d != dim {
            return None;
        }
        let floats: Vec<f32> = bytes[header..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if floats.iter().any(|x| !x.is_finite()) {
            return None;
        }
        Some(floats.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Writes the vectors atomically (temp file, then rename), so readers never see half a file.
    pub fn store(&self, model_id: &str, content_hash: &str, vectors: &[Vec<f32>]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path(model_id, content_hash);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let dim = vectors.first().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(24 + vectors.len() * dim * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(dim as u64).to_le_bytes());
        for v in vectors {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&path, e)
        })
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
