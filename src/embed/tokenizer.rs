//! The embedders' tokenizer: the model's own `tokenizer.json`, read by the `tokenizers` crate,
//! with one part swapped for a compact one.
//!
//! `tokenizers` keeps a SentencePiece (Unigram) vocabulary in a byte trie with a hash map at
//! every node. For multilingual-e5-small's 250,002 pieces that trie takes about 300 MiB, more
//! than the int8 model itself, and building it is most of the model's start-up. Here the pieces
//! live in a finite-state transducer (`fst`, a few MB) and the segmentation is the same Viterbi
//! search `tokenizers` runs (SentencePiece's `encode_optimized`), so the token ids are the same;
//! `tests/tokenizer.rs` checks that on every built-in exemplar and fresh prompt. The normaliser,
//! pre-tokeniser, post-processor and padding are the `tokenizers` crate's own. Other models
//! (WordPiece, BPE) are read unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fst::raw::Output;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::{DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Token, TokenizerImpl};

/// A tokenizer read from a `tokenizer.json`.
pub(crate) type TextTokenizer = TokenizerImpl<AnyModel, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// Reads a `tokenizer.json`; the error says what is wrong with it.
pub(crate) fn from_bytes(json: &[u8]) -> std::result::Result<TextTokenizer, String> {
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// The tokenizer's model: a compact Unigram, or any other model as `tokenizers` reads it.
pub(crate) enum AnyModel {
    Unigram(CompactUnigram),
    Other(ModelWrapper),
}

impl<'de> Deserialize<'de> for AnyModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let kind: Kind = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        if kind.kind.as_deref() == Some("Unigram") {
            let parts: UnigramJson = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
            CompactUnigram::new(parts.vocab, parts.unk_id, parts.byte_fallback).map(AnyModel::Unigram).map_err(D::Error::custom)
        } else {
            serde_json::from_str(raw.get()).map(AnyModel::Other).map_err(D::Error::custom)
        }
    }
}

#[derive(Deserialize)]
struct UnigramJson {
    vocab: Vec<(String, f64)>,
    unk_id: Option<usize>,
    #[serde(default)]
    byte_fallback: bool,
}

impl Model for AnyModel {
    type Trainer = TrainerWrapper;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        match self {
            AnyModel::Unigram(m) => m.tokenize(sequence),
            AnyModel::Other(m) => m.tokenize(sequence),
        }
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            AnyModel::Unigram(m) => m.id_of(token),
            AnyModel::Other(m) => m.token_to_id(token),
        }
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            AnyModel::Unigram(m) => m.piece(id as usize).map(str::to_string),
            AnyModel::Other(m) => m.id_to_token(id),
        }
    }
    fn get_vocab(&self) -> HashMap<String, u32> {
        match self {
            AnyModel::Unigram(m) => m.vocab(),
            AnyModel::Other(m) => m.get_vocab(),
        }
    }
    fn get_vocab_size(&self) -> usize {
        match self {
            AnyModel::Unigram(m) => m.scores.len(),
            AnyModel::Other(m) => m.get_vocab_size(),
        }
    }
    fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        match self {
            AnyModel::Unigram(_) => Err("semroute's compact Unigram model is read-only".into()),
            AnyModel::Other(m) => m.save(folder, prefix),
        }
    }
    fn get_trainer(&self) -> TrainerWrapper {
        match self {
            AnyModel::Unigram(_) => TrainerWrapper::UnigramTrainer(UnigramTrainer::default()),
            AnyModel::Other(m) => m.get_trainer(),
        }
    }
}

/// SentencePiece's score penalty for a character no piece covers (`kUnkPenalty`).
const UNK_PENALTY: f64 = 10.0;

/// A Unigram (SentencePiece) model whose pieces live in a finite-state transducer.
pub(crate) struct CompactUnigram {
    /// Piece bytes → id; where a piece is listed twice, the later id (as `tokenizers` keeps it).
    ids: fst::Map<Vec<u8>>,
    /// Every piece, one after another; piece `i` is `text[starts[i]..starts[i + 1]]`.
    text: String,
    starts: Vec<u32>,
    scores: Vec<f64>,
    min_score: f64,
    unk_id: Option<u32>,
    byte_fallback: bool,
}

impl CompactUnigram {
    fn new(vocab: Vec<(String, f64)>, unk_id: Option<usize>, byte_fallback: bool) -> std::result::Result<Self, String> {
        if let Some(unk) = unk_id {
            if vocab.is_empty() {
                return Err("the Unigram vocabulary is empty".into());
            }
            if unk >= vocab.len() {
                return Err(format!("unk_id {unk} is not in the Unigram vocabulary of {} pieces", vocab.len()));
            }
        }
        if vocab.len() >= u32::MAX as usize {
            return Err("the Unigram vocabulary is too large".into());
        }
        let total: usize = vocab.iter().map(|(p, _)| p.len()).sum();
        let total = u32::try_from(total).map_err(|_| "the Unigram vocabulary's text is too large".to_string())?;
        let mut text = String::with_capacity(total as usize);
        let mut starts = Vec::with_capacity(vocab.len() + 1);
        let mut scores = Vec::with_capacity(vocab.len());
        let mut min_score = f64::INFINITY;
        for (piece, score) in vocab {
            starts.push(text.len() as u32);
            text.push_str(&piece);
            min_score = min_score.min(score);
            scores.push(score);
        }
        starts.push(text.len() as u32);
        let bytes = text.as_bytes();
        // An fst takes its keys sorted and once each: sort (piece, id) pairs, so that of equal
        // pieces the last listed comes last, and keep each piece's last id.
        let mut order: Vec<(&[u8], u32)> =
            starts.windows(2).enumerate().map(|(id, w)| (&bytes[w[0] as usize..w[1] as usize], id as u32)).collect();
        order.sort_unstable();
        let mut builder = fst::MapBuilder::memory();
        for (n, &(key, id)) in order.iter().enumerate() {
            if order.get(n + 1).is_some_and(|next| next.0 == key) {
                continue;
            }
            builder.insert(key, u64::from(id)).map_err(|e| e.to_string())?;
        }
        drop(order);
        let ids = builder.into_map();
        Ok(CompactUnigram { ids, text, starts, scores, min_score, unk_id: unk_id.map(|u| u as u32), byte_fallback })
    }

    fn piece(&self, id: usize) -> Option<&str> {
        let (start, end) = (*self.starts.get(id)?, *self.starts.get(id + 1)?);
        Some(&self.text[start as usize..end as usize])
    }

    fn id_of(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).map(|id| id as u32)
    }

    fn vocab(&self) -> HashMap<String, u32> {
        use fst::Streamer;
        let mut out = HashMap::with_capacity(self.scores.len());
        let mut stream = self.ids.stream();
        while let Some((key, id)) = stream.next() {
            out.insert(String::from_utf8_lossy(key).into_owned(), id as u32);
        }
        out
    }

    /// Calls `found(length, id)` for every piece that is a prefix of `bytes`, shortest first.
    fn prefixes(&self, bytes: &[u8], mut found: impl FnMut(usize, u32)) {
        let fst = self.ids.as_fst();
        let mut node = fst.root();
        let mut out = Output::zero();
        for (i, &b) in bytes.iter().enumerate() {
            let Some(t) = node.find_input(b) else { return };
            let transition = node.transition(t);
            out = out.cat(transition.out);
            node = fst.node(transition.addr);
            if node.is_final() {
                found(i + 1, out.cat(node.final_output()).value() as u32);
            }
        }
    }

    /// The best segmentation of `sentence` (byte ranges, in order): SentencePiece's Viterbi
    /// search, with runs of unknown characters fused into one piece, as `tokenizers` does.
    fn segment(&self, sentence: &str) -> tokenizers::Result<Vec<(usize, usize)>> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f64,
            from: Option<usize>,
        }
        let size = sentence.len();
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![Best { id: 0, score: 0.0, from: None }; size + 1];
        let bytes = sentence.as_bytes();
        let mut start = 0;
        while start < size {
            let here = best[start].score;
            let char_len = sentence[start..].chars().next().map_or(1, char::len_utf8);
            let mut has_single = false;
            self.prefixes(&bytes[start..], |len, id| {
                let candidate = self.scores[id as usize] + here;
                let target = &mut best[start + len];
                if target.from.is_none() || candidate > target.score {
                    *target = Best { id, score: candidate, from: Some(start) };
                }
                has_single |= len == char_len;
            });
            if !has_single {
                let unk = self.unk_id.ok_or("the Unigram model has no unk_id for an unknown character")?;
                let candidate = unk_score + here;
                let target = &mut best[start + char_len];
                if target.from.is_none() || candidate > target.score {
                    *target = Best { id: unk, score: candidate, from: Some(start) };
                }
            }
            start += char_len;
        }
        let mut pieces = Vec::new();
        let mut end = size;
        let mut unknown_run: Option<(usize, usize)> = None;
        while end > 0 {
            let node = best[end];
            let from = node.from.ok_or("the Unigram search left a gap")?;
            if Some(node.id) == self.unk_id {
                unknown_run = Some((from, unknown_run.map_or(end, |(_, e)| e)));
            } else {
                pieces.extend(unknown_run.take());
                pieces.push((from, end));
            }
            end = from;
        }
        pieces.extend(unknown_run);
        pieces.reverse();
        Ok(pieces)
    }

    fn tokenize(&self, sentence: &str) -> tokenizers::Result<Vec<Token>> {
        if sentence.is_empty() {
            return Ok(Vec::new());
        }
        let mut tokens = Vec::new();
        for (start, end) in self.segment(sentence)? {
            let piece = &sentence[start..end];
            // As `tokenizers` does: every piece is looked up again by its text, so a fused run
            // of unknown characters that happens to be a piece gets that piece's id.
            let id = match self.id_of(piece) {
                Some(id) => id,
                None => {
                    if self.byte_fallback {
                        let bytes: Option<Vec<Token>> = piece
                            .bytes()
                            .map(|b| {
                                let name = format!("<0x{b:02X}>");
                                self.id_of(&name).map(|id| Token::new(id, name, (start, end)))
                            })
                            .collect();
                        if let Some(bytes) = bytes {
                            tokens.extend(bytes);
                            continue;
                        }
                    }
                    self.unk_id.ok_or("the Unigram model has no unk_id for an unknown piece")?
                }
            };
            tokens.push(Token::new(id, piece.to_string(), (start, end)));
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pieces: &[(&str, f64)], unk: Option<usize>) -> CompactUnigram {
        CompactUnigram::new(pieces.iter().map(|(p, s)| (p.to_string(), *s)).collect(), unk, false).unwrap()
    }

    fn ids(m: &CompactUnigram, s: &str) -> Vec<u32> {
        m.tokenize(s).unwrap().iter().map(|t| t.id).collect()
    }

    #[test]
    fn picks_the_highest_scoring_segmentation() {
        // "abc" as "ab"+"c" scores -3, as "a"+"bc" -2.5, as "abc" -4, as three letters -3.
        let m = model(&[("<unk>", 0.0), ("a", -1.0), ("b", -1.0), ("c", -1.0), ("ab", -2.0), ("bc", -1.5), ("abc", -4.0)], Some(0));
        assert_eq!(ids(&m, "abc"), vec![1, 5]);
    }

    #[test]
    fn fuses_unknown_characters_and_keeps_offsets() {
        let m = model(&[("<unk>", 0.0), ("a", -1.0), ("b", -1.0)], Some(0));
        let tokens = m.tokenize("a数学b").unwrap();
        let got: Vec<(u32, &str, (usize, usize))> = tokens.iter().map(|t| (t.id, t.value.as_str(), t.offsets)).collect();
        assert_eq!(got, vec![(1, "a", (0, 1)), (0, "数学", (1, 7)), (2, "b", (7, 8))]);
    }

    #[test]
    fn a_repeated_piece_keeps_its_last_id() {
        let m = model(&[("<unk>", 0.0), ("x", -1.0), ("x", -0.5)], Some(0));
        assert_eq!(m.id_of("x"), Some(2));
        assert_eq!(ids(&m, "xx"), vec![2, 2]);
        assert_eq!(m.piece(1), Some("x"));
    }

    #[test]
    fn an_unknown_character_without_unk_id_is_an_error() {
        let m = model(&[("a", -1.0)], None);
        assert!(m.tokenize("ab").is_err());
        assert!(CompactUnigram::new(vec![("a".into(), 0.0)], Some(3), false).is_err());
    }

    /// The installed default model's tokenizer (multilingual-e5's 250,002 SentencePiece pieces)
    /// gives the ids the `tokenizers` crate gives, on every built-in exemplar, every fresh
    /// prompt and texts chosen to stress it (unknown characters, odd spacing, mixed scripts).
    #[test]
    fn matches_the_tokenizers_crate_on_the_default_model() {
        let home = crate::embed::Home::from_env();
        let dir = home.model_dir(crate::embed::DEFAULT_MODEL);
        if !dir.join("READY").is_file() {
            crate::setup::install_model(crate::embed::DEFAULT_MODEL, false).unwrap_or_else(|e| panic!("{e}"));
        }
        let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
        let ours = from_bytes(&json).unwrap();
        assert!(matches!(ours.get_model(), AnyModel::Unigram(_)), "the default model's tokenizer is a Unigram one");
        let stock = tokenizers::Tokenizer::from_bytes(&json).unwrap();
        assert_eq!(ours.get_vocab_size(true), stock.get_vocab_size(true));

        let mut texts: Vec<String> = crate::ExemplarSet::builtin().unwrap().iter().map(|e| e.prompt.clone()).collect();
        for fixture in [include_str!("../../tests/fixtures/fresh/prompts.jsonl"), include_str!("../../tests/fixtures/fresh/nonsense.jsonl")]
        {
            for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                texts.push(v["prompt"].as_str().unwrap().to_string());
            }
        }
        assert!(texts.len() > 700, "{} texts", texts.len());
        for odd in [
            "",
            " ",
            "\u{0}\u{7f}",
            "   leading and   inner   spaces  ",
            "tabs\tand\nnewlines\r\n",
            "emoji 🤖🧪🔥 and ZWJ 👩‍🔬",
            "<unk> <s> </s> <pad> literal specials",
            "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３",
            "Ǆ ǅ ǆ ﬁ ligatures",
            "𠀀𠀁 rare CJK extension B",
            "ᚠᛇᚻ runes and ꦲꦏ Javanese",
            "mixed 中文English混合テキスト한국어",
            "a\u{301}e\u{301} combining marks",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            texts.push(odd.to_string());
        }
        let mut differ = Vec::new();
        for text in &texts {
            let a = ours.encode(text.as_str(), true).unwrap();
            let b = stock.encode(text.as_str(), true).unwrap();
            if a.get_ids() != b.get_ids() || a.get_offsets() != b.get_offsets() {
                differ.push(text.clone());
            }
        }
        assert!(
            differ.is_empty(),
            "{} of {} texts tokenised differently, e.g. {:?}",
            differ.len(),
            texts.len(),
            &differ[..differ.len().min(3)]
        );
    }

    #[test]
    fn reads_a_tokenizer_json_with_a_unigram_model() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
            "post_processor":null,"decoder":null,
            "model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0],["▁hi",-1.0],["▁h",-2.0],["i",-2.0]],"byte_fallback":false}}"#;
        let t = from_bytes(json.as_bytes()).unwrap();
        assert!(matches!(t.get_model(), AnyModel::Unigram(_)));
        assert_eq!(t.encode("hi hi", false).unwrap().get_ids(), &[1, 1]);
        assert!(from_bytes(b"{\"model\":{\"type\":\"Unigram\",\"vocab\":7}}").is_err());
    }
}
