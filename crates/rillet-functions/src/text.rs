//! Text operators for data cleaning: Unicode normalisation, chunking, statistics, exact
//! and near-duplicate signatures, and PII masking.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float64Builder, ListBuilder, StringBuilder, StructArray,
    UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use regex::Regex;
use rillet_common::types::display_type;
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;
use unicode_normalization::UnicodeNormalization;

use crate::input::string_at;
use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};

/// Every text operator.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Normalize)),
        Arc::new(OperatorFunction::new(Chunk)),
        Arc::new(OperatorFunction::new(Stats)),
        Arc::new(OperatorFunction::new(ContentHash)),
        Arc::new(OperatorFunction::new(MinHash)),
        Arc::new(OperatorFunction::new(MaskPii)),
        Arc::new(OperatorFunction::new(Language)),
    ]
}

/// Check that `field` is a string column, naming `operator` in the error.
pub fn expect_text(operator: &str, field: &Field) -> Result<()> {
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
        _ => Err(RilletError::invalid_argument(format!(
            "{operator}: input must be a string column; column {:?} is {}",
            field.name(),
            display_type(field)
        ))),
    }
}

pub(crate) fn strings<'a>(call: &'a Call<'_>) -> impl Iterator<Item = Option<&'a str>> + 'a {
    let array = call.inputs[0].as_ref();
    (0..call.rows).map(move |row| string_at(array, row))
}

/// `text_normalize(s, form, lowercase, collapse_whitespace)`: Unicode normalisation (NFC,
/// NFD, NFKC, NFKD), optional lower-casing, and runs of whitespace collapsed to one space
/// (trimmed at both ends).
#[derive(Debug)]
pub struct Normalize;

fn normalize(text: &str, form: &str, lowercase: bool, collapse: bool) -> String {
    let mut out: String = match form {
        "NFD" => text.nfd().collect(),
        "NFKC" => text.nfkc().collect(),
        "NFKD" => text.nfkd().collect(),
        _ => text.nfc().collect(),
    };
    if lowercase {
        out = out.to_lowercase();
    }
    if collapse {
        out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    out
}

fn form(params: &Params) -> Result<String> {
    let form = params.str("form")?.to_ascii_uppercase();
    match form.as_str() {
        "NFC" | "NFD" | "NFKC" | "NFKD" => Ok(form),
        other => Err(RilletError::invalid_argument(format!(
            "form must be NFC, NFD, NFKC or NFKD, not {other:?}"
        ))),
    }
}

impl Operator for Normalize {
    fn name(&self) -> &'static str {
        "text_normalize"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("form", ParamKind::Str, "NFC"),
            Param::optional("lowercase", ParamKind::Bool, "false"),
            Param::optional("collapse_whitespace", ParamKind::Bool, "true"),
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        form(params)?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let form = form(call.params)?;
        let (lower, collapse) = (
            call.params.bool("lowercase")?,
            call.params.bool("collapse_whitespace")?,
        );
        let mut out = StringBuilder::new();
        for text in strings(call) {
            out.append_option(text.map(|t| normalize(t, &form, lower, collapse)));
        }
        Ok(Arc::new(out.finish()))
    }
}

/// Split `text` into pieces of at most `size` units with `overlap` units shared between
/// neighbours. Units: characters, whitespace-separated words, or sentences (pieces are then
/// runs of whole sentences up to `size` characters).
fn chunk(text: &str, size: usize, overlap: usize, unit: &str) -> Vec<String> {
    match unit {
        "words" => {
            let words: Vec<&str> = text.split_whitespace().collect();
            windows(words.len(), size, overlap)
                .into_iter()
                .map(|(a, b)| words[a..b].join(" "))
                .collect()
        }
        "sentences" => {
            let sentences = split_sentences(text);
            let mut out = Vec::new();
            let mut current = String::new();
            for sentence in sentences {
                if !current.is_empty()
                    && current.chars().count() + 1 + sentence.chars().count() > size
                {
                    out.push(std::mem::take(&mut current));
                }
                if !current.is_empty() {
                    current.push(' ');
                }
                current.push_str(sentence);
            }
            if !current.is_empty() {
                out.push(current);
            }
            out
        }
        _ => {
            let chars: Vec<char> = text.chars().collect();
            windows(chars.len(), size, overlap)
                .into_iter()
                .map(|(a, b)| chars[a..b].iter().collect())
                .collect()
        }
    }
}

/// `[start, end)` windows of `size` over `0..len`, each starting `size - overlap` after
/// the previous, stopping at the first window that reaches the end.
fn windows(len: usize, size: usize, overlap: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + size).min(len);
        out.push((start, end));
        if end == len {
            break;
        }
        start += size - overlap;
    }
    out
}

fn split_sentences(text: &str) -> Vec<&str> {
    static END: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"[.!?。！？]+[\s]+").expect("valid regex"));
    let mut out = Vec::new();
    let mut start = 0;
    for m in END.find_iter(text) {
        let piece = text[start..m.end()].trim();
        if !piece.is_empty() {
            out.push(piece);
        }
        start = m.end();
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// `text_chunk(s, size, overlap, unit)`: a list of chunks (explode it for one row per
/// chunk). `unit` is `"chars"`, `"words"` or `"sentences"`.
#[derive(Debug)]
pub struct Chunk;

fn chunk_options(params: &Params) -> Result<(usize, usize, String)> {
    let size = params.size("size")? as usize;
    let overlap = params.size("overlap")? as usize;
    let unit = params.str("unit")?.to_ascii_lowercase();
    if size == 0 || overlap >= size {
        return Err(RilletError::invalid_argument(format!(
            "chunk needs size > overlap >= 0 (size {size}, overlap {overlap})"
        )));
    }
    if !["chars", "words", "sentences"].contains(&unit.as_str()) {
        return Err(RilletError::invalid_argument(format!(
            "unit must be chars, words or sentences, not {unit:?}"
        )));
    }
    Ok((size, overlap, unit))
}

impl Operator for Chunk {
    fn name(&self) -> &'static str {
        "text_chunk"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("size", ParamKind::Int),
            Param::optional("overlap", ParamKind::Int, "0"),
            Param::optional("unit", ParamKind::Str, "chars"),
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        chunk_options(params)?;
        Ok(Field::new(
            self.name(),
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let (size, overlap, unit) = chunk_options(call.params)?;
        let mut out = ListBuilder::new(StringBuilder::new());
        for text in strings(call) {
            match text {
                Some(text) => {
                    for piece in chunk(text, size, overlap, &unit) {
                        out.values().append_value(piece);
                    }
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(Arc::new(out.finish()))
    }
}

fn stats_fields() -> Fields {
    Fields::from(vec![
        Field::new("chars", DataType::UInt64, true),
        Field::new("words", DataType::UInt64, true),
        Field::new("lines", DataType::UInt64, true),
        Field::new("alpha_ratio", DataType::Float64, true),
        Field::new("digit_ratio", DataType::Float64, true),
        Field::new("whitespace_ratio", DataType::Float64, true),
        Field::new("special_ratio", DataType::Float64, true),
        Field::new("duplicate_line_ratio", DataType::Float64, true),
    ])
}

/// `text_stats(s)`: struct{chars, words, lines, alpha_ratio, digit_ratio,
/// whitespace_ratio, special_ratio, duplicate_line_ratio} — the usual quality-filter
/// signals. Ratios are of characters; `duplicate_line_ratio` is the share of non-empty
/// lines that repeat an earlier line.
#[derive(Debug)]
pub struct Stats;

impl Operator for Stats {
    fn name(&self) -> &'static str {
        "text_stats"
    }

    fn params(&self) -> &'static [Param] {
        &[]
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(stats_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let mut counts: [UInt64Builder; 3] = [
            UInt64Builder::new(),
            UInt64Builder::new(),
            UInt64Builder::new(),
        ];
        let mut ratios: [Float64Builder; 5] = std::array::from_fn(|_| Float64Builder::new());
        let mut valid = Vec::with_capacity(call.rows);
        for text in strings(call) {
            let Some(text) = text else {
                counts.iter_mut().for_each(|b| b.append_null());
                ratios.iter_mut().for_each(|b| b.append_null());
                valid.push(false);
                continue;
            };
            let (mut chars, mut alpha, mut digit, mut space) = (0u64, 0u64, 0u64, 0u64);
            for c in text.chars() {
                chars += 1;
                if c.is_alphabetic() {
                    alpha += 1;
                } else if c.is_numeric() {
                    digit += 1;
                } else if c.is_whitespace() {
                    space += 1;
                }
            }
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let mut seen = HashSet::new();
            let repeated = lines.iter().filter(|l| !seen.insert(**l)).count();
            let share = |n: u64| {
                if chars == 0 {
                    0.0
                } else {
                    n as f64 / chars as f64
                }
            };
            counts[0].append_value(chars);
            counts[1].append_value(text.split_whitespace().count() as u64);
            counts[2].append_value(text.lines().count() as u64);
            ratios[0].append_value(share(alpha));
            ratios[1].append_value(share(digit));
            ratios[2].append_value(share(space));
            ratios[3].append_value(share(chars - alpha - digit - space));
            ratios[4].append_value(if lines.is_empty() {
                0.0
            } else {
                repeated as f64 / lines.len() as f64
            });
            valid.push(true);
        }
        let mut columns: Vec<ArrayRef> = counts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.extend(ratios.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(Arc::new(StructArray::try_new(
            stats_fields(),
            columns,
            Some(valid.into()),
        )?))
    }
}

/// `text_content_hash(s)`: a 64-bit XXH3 hash of the UTF-8 bytes, for exact-duplicate
/// detection (stable across runs and machines).
#[derive(Debug)]
pub struct ContentHash;

impl Operator for ContentHash {
    fn name(&self) -> &'static str {
        "text_content_hash"
    }

    fn params(&self) -> &'static [Param] {
        &[]
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::UInt64, true))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let out: UInt64Array = strings(call)
            .map(|t| t.map(|t| twox_hash::XxHash3_64::oneshot(t.as_bytes())))
            .collect();
        Ok(Arc::new(out))
    }
}

/// `text_minhash(s, num_perm, ngram, seed)`: a MinHash signature of the text's word
/// `ngram`-shingles (`num_perm` values); the share of equal positions between two
/// signatures estimates their Jaccard similarity.
#[derive(Debug)]
pub struct MinHash;

const MERSENNE_61: u64 = (1 << 61) - 1;

fn minhash(text: &str, num_perm: usize, ngram: usize, seed: u64) -> Vec<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let shingles: Vec<u64> = if words.len() <= ngram {
        vec![twox_hash::XxHash3_64::oneshot_with_seed(
            seed,
            words.join(" ").as_bytes(),
        )]
    } else {
        words
            .windows(ngram)
            .map(|w| twox_hash::XxHash3_64::oneshot_with_seed(seed, w.join(" ").as_bytes()))
            .collect()
    };
    (0..num_perm as u64)
        .map(|i| {
            // Permutation i: h -> (a h + b) mod (2^61 - 1), with a, b derived from the seed.
            let a = (twox_hash::XxHash3_64::oneshot_with_seed(seed ^ 0xA5A5, &i.to_le_bytes())
                % (MERSENNE_61 - 1))
                + 1;
            let b = twox_hash::XxHash3_64::oneshot_with_seed(seed ^ 0x5A5A, &i.to_le_bytes())
                % MERSENNE_61;
            shingles
                .iter()
                .map(|h| {
                    ((a as u128 * (h % MERSENNE_61) as u128 + b as u128) % MERSENNE_61 as u128)
                        as u64
                })
                .min()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

fn minhash_options(params: &Params) -> Result<(usize, usize, u64)> {
    let (num_perm, ngram) = (
        params.size("num_perm")? as usize,
        params.size("ngram")? as usize,
    );
    if num_perm == 0 || num_perm > 4096 || ngram == 0 {
        return Err(RilletError::invalid_argument(format!(
            "minhash needs 1 <= num_perm <= 4096 and ngram >= 1 (got {num_perm}, {ngram})"
        )));
    }
    Ok((num_perm, ngram, params.int("seed")? as u64))
}

impl Operator for MinHash {
    fn name(&self) -> &'static str {
        "text_minhash"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("num_perm", ParamKind::Int, "64"),
            Param::optional("ngram", ParamKind::Int, "5"),
            Param::optional("seed", ParamKind::Int, "1"),
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        let (num_perm, _, _) = minhash_options(params)?;
        Ok(Field::new(
            self.name(),
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::UInt64, true)),
                num_perm as i32,
            ),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let (num_perm, ngram, seed) = minhash_options(call.params)?;
        let mut values = Vec::with_capacity(call.rows * num_perm);
        let mut valid = Vec::with_capacity(call.rows);
        for text in strings(call) {
            match text {
                Some(t) => values.extend(minhash(t, num_perm, ngram, seed)),
                None => values.extend(std::iter::repeat_n(0, num_perm)),
            }
            valid.push(text.is_some());
        }
        let item = Arc::new(Field::new("item", DataType::UInt64, true));
        Ok(Arc::new(FixedSizeListArray::try_new(
            item,
            num_perm as i32,
            Arc::new(UInt64Array::from(values)),
            Some(valid.into()),
        )?))
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("valid regex")
});
static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
        .expect("valid regex")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").expect("valid regex"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b")
        .expect("valid regex")
});

fn luhn(digits: &str) -> bool {
    let digits: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    digits.len() >= 13 && sum.is_multiple_of(10)
}

fn mask_pii(text: &str, kinds: &[String]) -> String {
    let mut out = text.to_string();
    // Order matters: cards before phones (a card number also looks like digits groups).
    for kind in ["email", "card", "ip", "phone"] {
        if !kinds.iter().any(|k| k == kind) {
            continue;
        }
        out = match kind {
            "email" => EMAIL.replace_all(&out, "[EMAIL]").into_owned(),
            "ip" => IPV4.replace_all(&out, "[IP]").into_owned(),
            "card" => CARD
                .replace_all(&out, |c: &regex::Captures<'_>| {
                    if luhn(&c[0]) {
                        "[CARD]".to_string()
                    } else {
                        c[0].to_string()
                    }
                })
                .into_owned(),
            _ => PHONE.replace_all(&out, "[PHONE]").into_owned(),
        };
    }
    out
}

fn pii_kinds(params: &Params) -> Result<Vec<String>> {
    let kinds: Vec<String> = params
        .str("kinds")?
        .split(',')
        .map(|k| k.trim().to_ascii_lowercase())
        .filter(|k| !k.is_empty())
        .collect();
    for k in &kinds {
        if !["email", "phone", "ip", "card"].contains(&k.as_str()) {
            return Err(RilletError::invalid_argument(format!(
                "unknown PII kind {k:?}; expected email, phone, ip, card"
            )));
        }
    }
    Ok(kinds)
}

/// `text_mask_pii(s, kinds)`: replace e-mail addresses, phone numbers, IPv4 addresses and
/// card numbers (Luhn-checked) with `[EMAIL]`, `[PHONE]`, `[IP]`, `[CARD]`. `kinds` is a
/// comma-separated subset (all by default).
#[derive(Debug)]
pub struct MaskPii;

impl Operator for MaskPii {
    fn name(&self) -> &'static str {
        "text_mask_pii"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::optional(
            "kinds",
            ParamKind::Str,
            "email,phone,ip,card",
        )];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        pii_kinds(params)?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let kinds = pii_kinds(call.params)?;
        let mut out = StringBuilder::new();
        for text in strings(call) {
            out.append_option(text.map(|t| mask_pii(t, &kinds)));
        }
        Ok(Arc::new(out.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_with_overlap() {
        assert_eq!(
            chunk("abcdefgh", 3, 1, "chars"),
            vec!["abc", "cde", "efg", "gh"]
        );
        assert_eq!(chunk("abcdef", 3, 0, "chars"), vec!["abc", "def"]);
        assert_eq!(
            chunk("one two three four five", 2, 0, "words"),
            vec!["one two", "three four", "five"]
        );
        assert_eq!(
            chunk("A b. C d! E?", 6, 0, "sentences"),
            vec!["A b.", "C d!", "E?"]
        );
        assert!(chunk("", 3, 0, "chars").is_empty());
    }

    #[test]
    fn minhash_estimates_jaccard() {
        let a = "the quick brown fox jumps over the lazy dog near the river bank today";
        let b = "the quick brown fox jumps over the lazy dog near the river bank tonight";
        let c = "completely different words about something else entirely unrelated here now";
        let same = |x: &[u64], y: &[u64]| {
            x.iter().zip(y).filter(|(p, q)| p == q).count() as f64 / x.len() as f64
        };
        let (ha, hb, hc) = (
            minhash(a, 128, 3, 1),
            minhash(b, 128, 3, 1),
            minhash(c, 128, 3, 1),
        );
        assert!(same(&ha, &hb) > 0.6, "{}", same(&ha, &hb));
        assert!(same(&ha, &hc) < 0.1);
        assert_eq!(ha, minhash(a, 128, 3, 1));
    }

    #[test]
    fn masks_each_kind() {
        let all: Vec<String> = ["email", "phone", "ip", "card"].map(String::from).to_vec();
        let text = "mail bob@example.com, call +1 415-555-0132, host 10.0.0.12, card 4111 1111 1111 1111, id 1234567890123";
        let masked = mask_pii(text, &all);
        assert_eq!(
            masked,
            "mail [EMAIL], call [PHONE], host [IP], card [CARD], id 1234567890123"
        );
    }
}

fn language_fields() -> Fields {
    Fields::from(vec![
        Field::new("language", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("confidence", DataType::Float64, true),
        Field::new("reliable", DataType::Boolean, true),
    ])
}

/// `text_language(s)`: struct{language (ISO 639-3 code, e.g. `eng`), name (in English),
/// confidence in [0, 1], reliable}, from character trigram profiles of 69 languages
/// (whatlang). Null for null or empty text and text with no letters.
///
/// ```
/// let info = whatlang::detect("Ceci est une phrase écrite en français, assez longue pour être sûre.").unwrap();
/// assert_eq!(info.lang().code(), "fra");
/// ```
#[derive(Debug)]
pub struct Language;

impl Operator for Language {
    fn name(&self) -> &'static str {
        "text_language"
    }

    fn params(&self) -> &'static [Param] {
        &[]
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_text(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(language_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let mut out = arrow::array::StructBuilder::from_fields(language_fields(), call.rows);
        for text in strings(call) {
            let info = text.and_then(whatlang::detect);
            let lang = info.as_ref().map(|i| i.lang());
            out.field_builder::<StringBuilder>(0)
                .expect("utf8")
                .append_option(lang.map(|l| l.code()));
            out.field_builder::<StringBuilder>(1)
                .expect("utf8")
                .append_option(lang.map(|l| l.eng_name()));
            out.field_builder::<Float64Builder>(2)
                .expect("f64")
                .append_option(info.as_ref().map(|i| i.confidence()));
            out.field_builder::<arrow::array::BooleanBuilder>(3)
                .expect("bool")
                .append_option(info.as_ref().map(|i| i.is_reliable()));
            out.append(info.is_some());
        }
        Ok(Arc::new(out.finish()))
    }
}
