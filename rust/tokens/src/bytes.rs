//! GPT-2's byte <-> printable-character table. Byte-level BPE vocabularies
//! (and GGUF `gpt2` token lists) spell every byte as one printable char so
//! that tokens are valid strings: bytes that are already printable and not
//! whitespace map to themselves, the other 68 map to U+0100.. in byte order.
//! The `tokenizers` crate keeps its copy private, so it is rebuilt here.
use std::sync::LazyLock;

fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// BYTE_TO_CHAR[b] is the char that spells byte b.
static BYTE_TO_CHAR: LazyLock<[char; 256]> = LazyLock::new(|| {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are valid chars");
            next += 1;
            c
        };
    }
    table
});

/// The char that spells byte `b` in a byte-level vocabulary.
pub fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// CHAR_TO_BYTE[c - 0x100] for the 68 chars above U+00FF.
static HIGH_CHAR_TO_BYTE: LazyLock<[u8; 68]> = LazyLock::new(|| {
    let mut table = [0u8; 68];
    for b in 0..=255u8 {
        let c = byte_to_char(b) as u32;
        if c >= 0x100 {
            table[(c - 0x100) as usize] = b;
        }
    }
    table
});

/// The byte a byte-level char stands for, or None for chars outside the table.
pub fn char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x100 {
        printable(code as u8).then_some(code as u8)
    } else {
        HIGH_CHAR_TO_BYTE.get((code - 0x100) as usize).copied()
    }
}

/// The bytes a byte-level token spells, or None if a char is outside the table.
pub fn token_to_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_to_byte).collect()
}

/// The byte-level spelling of raw bytes.
pub fn bytes_to_token(bytes: &[u8]) -> String {
    bytes.iter().map(|b| byte_to_char(*b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_matching_gpt2() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(token_to_bytes("Ġfn"), Some(b" fn".to_vec()));
        assert_eq!(bytes_to_token(b" fn\n"), "ĠfnĊ");
    }
}
