//! Protobuf wire format, read without trusting a byte of it: every length is checked against what
//! is left, so truncated or hostile input is an error, never a panic or a huge allocation.

use crate::DecodeError;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    pub fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        }
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(malformed("truncated varint"));
            };
            self.buf = rest;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(malformed("varint overflows 64 bits"))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(malformed("length runs past the end of the message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, value)`; `None` at the end of the message.
    pub fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(malformed("invalid field number"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| malformed("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            // Groups (3, 4) are proto1-era; no Kubernetes type uses them and gogo's generated
            // code has none to fill, so they are treated as corruption.
            w => return Err(malformed(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((number as u32, value)))
    }
}

pub(crate) fn malformed(what: &str) -> DecodeError {
    DecodeError::Malformed { path: String::new(), reason: what.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x96, 0x01]).varint().unwrap(), 150);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn fields() {
        // 1: varint 8; 2: "hi"; 3: fixed64; 4: fixed32
        let b = [0x08, 0x08, 0x12, 0x02, b'h', b'i', 0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0x25, 2, 0, 0, 0];
        let mut r = Reader::new(&b);
        assert!(matches!(r.field().unwrap(), Some((1, Value::Varint(8)))));
        assert!(matches!(r.field().unwrap(), Some((2, Value::Bytes(b"hi")))));
        assert!(matches!(r.field().unwrap(), Some((3, Value::Fixed64(1)))));
        assert!(matches!(r.field().unwrap(), Some((4, Value::Fixed32(2)))));
        assert!(r.field().unwrap().is_none());
        assert!(Reader::new(&[0x12, 0x05, b'x']).field().is_err());
        assert!(Reader::new(&[0x00, 0x00]).field().is_err());
        assert!(Reader::new(&[0x0b]).field().is_err());
    }
}
