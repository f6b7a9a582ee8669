//! Token id → bytes, for stop strings (taken once from the `tokens` tokenizer, so matching a
//! stop string costs no tokenizer calls per step).

use crate::error::{EngineError, Result};

/// The bytes of every token id.
#[derive(Debug, Clone)]
pub struct Vocab {
    bytes: Vec<Vec<u8>>,
}

impl Vocab {
    pub fn from_tokenizer(t: &tokens::Tokenizer) -> Result<Self> {
        let bytes = (0..t.vocab_size() as u32)
            .map(|id| t.token_bytes(id).or_else(|_| Ok(Vec::new())))
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Self { bytes })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes of one id (empty for ids outside the vocabulary or without a token).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(|b| b.as_slice()).unwrap_or(&[])
    }
}
