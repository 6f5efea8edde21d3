//! Word tokenizer: splitting, vocabulary from the training split only
//! (frequency order, deterministic ties, size cap), PAD and OOV ids,
//! Keras-style pre/post padding and truncation, the time-major batch
//! layout, and the JSON round trip.

use crossmodal::data::tokenizer::{
    split_words, Padding, TokenIds, Tokenizer, TokenizerConfig, Truncation, OOV, PAD,
};
use crossmodal::data::Dataset;

fn config(vocab_size: usize) -> TokenizerConfig {
    TokenizerConfig {
        vocab_size,
        lowercase: true,
    }
}

#[test]
fn tokenizer_split_words() {
    assert_eq!(
        split_words("I DON'T like it!!! #sad @bob:)", true),
        ["i", "don't", "like", "it", "!", "!", "!", "#", "sad", "@", "bob", ":", ")"]
    );
    // Apostrophes only inside words; curly ones too; no lowercasing asked.
    assert_eq!(
        split_words("'Tis rock’n’roll, isn't it'", false),
        ["'", "Tis", "rock’n’roll", ",", "isn't", "it", "'"]
    );
    // Unicode letters and digits are words; emoji are tokens; variation
    // selectors vanish; whitespace of any kind separates.
    assert_eq!(
        split_words("Café\u{00a0}2 ❤\u{fe0f}\r\nÉTÉ_x", true),
        ["café", "2", "❤", "été_x"]
    );
    assert!(split_words(" \t\r\n", true).is_empty());
}

#[test]
fn tokenizer_vocab_from_train_only() {
    let all = Dataset {
        texts: vec![
            "good good good movie".into(),
            "bad movie!".into(),
            "good plot".into(),
            "terrible acting".into(), // test split only
        ],
        labels: vec![1, 0, 1, 0],
        classes: vec!["neg".into(), "pos".into()],
        ..Default::default()
    };
    let train = all.select(&[0, 1, 2]);
    let test = all.select(&[3]);
    let tok = Tokenizer::fit(config(100), &train.texts).unwrap();
    // By count: good 4, movie 2; then count 1 in byte order: "!" < "bad" < "plot".
    assert_eq!(tok.words(), ["good", "movie", "!", "bad", "plot"]);
    assert_eq!(tok.len(), 7);
    assert_eq!(tok.id("good"), 2);
    assert_eq!(tok.id("plot"), 6);
    // Words seen only in the test split are OOV.
    assert_eq!(tok.ids(&test.texts[0]), [OOV, OOV]);
    assert_eq!(tok.ids("GOOD acting"), [2, OOV]);
    assert_eq!(tok.word(PAD), Some("<pad>"));
    assert_eq!(tok.word(OOV), Some("<oov>"));
    assert_eq!(tok.word(3), Some("movie"));
    assert_eq!(tok.word(7), None);
}

#[test]
fn tokenizer_size_cap() {
    let texts = ["a a a b b c d", "c e"];
    // vocab_size counts PAD and OOV: 4 ids keep the 2 most frequent words
    // (a 3; then b 2 and c 2 tie, broken by byte order).
    let tok = Tokenizer::fit(config(4), &texts).unwrap();
    assert_eq!(tok.words(), ["a", "b"]);
    assert_eq!(tok.ids("a b c"), [2, 3, OOV]);
    assert_eq!(tok.len(), 4);
    // A cap larger than the vocabulary keeps every word.
    let tok = Tokenizer::fit(config(1000), &texts).unwrap();
    assert_eq!(tok.words(), ["a", "b", "c", "d", "e"]);
    // Fewer than 2 ids cannot hold PAD and OOV.
    let e = Tokenizer::fit(config(1), &texts).unwrap_err().to_string();
    assert!(e.contains("vocab_size"), "{e}");
}

#[test]
fn tokenizer_deterministic() {
    let texts: Vec<String> = (0..200)
        .map(|i| format!("w{} w{} shared x{}", i % 7, i % 13, i % 3))
        .collect();
    let a = Tokenizer::fit(config(12), &texts).unwrap();
    let b = Tokenizer::fit(config(12), &texts).unwrap();
    assert_eq!(a, b);
    // The text order does not matter (ties are broken by the word, not by
    // first occurrence).
    let mut reversed = texts.clone();
    reversed.reverse();
    let c = Tokenizer::fit(config(12), &reversed).unwrap();
    assert_eq!(a.words(), c.words());
    assert_eq!(a.words()[0], "shared");
}

#[test]
fn tokenizer_padding_and_truncation() {
    let tok = Tokenizer::fit(config(100), &["one two three four five"]).unwrap();
    // Every word counts 1, so ids follow byte order: five 2, four 3,
    // one 4, three 5, two 6.
    let (one, two, three, four, five) = (4, 6, 5, 3, 2);
    let short = "one two";
    let long = "one two three four five";
    let enc = |t: &str, p, tr| tok.encode_one(t, 4, p, tr);
    // Default Pre padding: zeros first (Keras pad_sequences).
    assert_eq!(Padding::default(), Padding::Pre);
    assert_eq!(Truncation::default(), Truncation::Pre);
    assert_eq!(
        enc(short, Padding::Pre, Truncation::Pre),
        [PAD, PAD, one, two]
    );
    assert_eq!(
        enc(short, Padding::Post, Truncation::Pre),
        [one, two, PAD, PAD]
    );
    // Pre truncation keeps the last tokens, Post the first ones.
    assert_eq!(
        enc(long, Padding::Pre, Truncation::Pre),
        [two, three, four, five]
    );
    assert_eq!(
        enc(long, Padding::Pre, Truncation::Post),
        [one, two, three, four]
    );
    // Padding does not matter for a long text, truncation not for a short one.
    assert_eq!(
        enc(long, Padding::Post, Truncation::Pre),
        enc(long, Padding::Pre, Truncation::Pre)
    );
    assert_eq!(
        enc(short, Padding::Post, Truncation::Post),
        enc(short, Padding::Post, Truncation::Pre)
    );
    // Exactly seq_len, an empty text, and OOV words kept in place.
    assert_eq!(
        tok.encode_one("one two three four", 4, Padding::Pre, Truncation::Pre),
        [one, two, three, four]
    );
    assert_eq!(enc("", Padding::Pre, Truncation::Pre), [PAD; 4]);
    assert_eq!(
        enc("six one", Padding::Post, Truncation::Pre),
        [OOV, one, PAD, PAD]
    );
    assert!(tok
        .encode_one("one", 0, Padding::Pre, Truncation::Pre)
        .is_empty());
}

#[test]
fn tokenizer_encode_and_time_major() {
    let tok = Tokenizer::fit(config(100), &["a b c", "a b", "a"]).unwrap();
    let (a, b, c) = (2, 3, 4);
    let ids = tok.encode(&["a b c", "c", "b a"], 3, Padding::Pre, Truncation::Pre);
    assert_eq!(ids.seq_len, 3);
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.row(0), [a, b, c]);
    assert_eq!(ids.row(1), [PAD, PAD, c]);
    assert_eq!(ids.row(2), [PAD, b, a]);
    // Samples 2 and 0 as a [T=3, B=2] time-major batch.
    assert_eq!(ids.time_major(&[2, 0]), [PAD, a, b, b, a, c]);
    // Repeated indices are allowed (sampling with replacement).
    assert_eq!(ids.time_major(&[1, 1]), [PAD, PAD, PAD, PAD, c, c]);
    assert!(ids.time_major(&[]).is_empty());
    let empty = TokenIds {
        ids: vec![],
        seq_len: 0,
    };
    assert_eq!(empty.len(), 0);
}

#[test]
fn tokenizer_json_round_trip() {
    let tok = Tokenizer::fit(config(50), &["Héllo, wörld! \"quoted\" don't", "wörld"]).unwrap();
    let json = tok.to_json();
    assert!(json.contains("\"vocab_size\": 50"), "{json}");
    let back = Tokenizer::from_json(&json, "vocab.json").unwrap();
    assert_eq!(back, tok);
    let text = "hello wörld don't \"quoted\"";
    assert_eq!(
        back.encode_one(text, 8, Padding::Pre, Truncation::Pre),
        tok.encode_one(text, 8, Padding::Pre, Truncation::Pre)
    );
    // A broken or inconsistent file is an error naming it.
    let e = Tokenizer::from_json("{", "vocab.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocab.json"), "{e}");
    let dup =
        r#"{"vocab_size": 10, "lowercase": true, "pad_id": 0, "oov_id": 1, "words": ["a", "a"]}"#;
    let e = Tokenizer::from_json(dup, "dup.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("dup.json") && e.contains("twice"), "{e}");
    let over =
        r#"{"vocab_size": 3, "lowercase": true, "pad_id": 0, "oov_id": 1, "words": ["a", "b"]}"#;
    let e = Tokenizer::from_json(over, "over.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocab_size"), "{e}");
}
