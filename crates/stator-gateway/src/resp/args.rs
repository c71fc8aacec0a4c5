//! A connection's parsed command arguments, in buffers reused from one command to the
//! next.
//!
//! [`parse_command`] returns a fresh `Vec<Vec<u8>>` per command: for a `SET key value`,
//! four allocations and four frees, on the path of every command a connection parses,
//! though the arguments live only until the command is classified (a forwarded command
//! travels as the bytes it arrived in, not as its arguments). [`Args`] keeps the buffers
//! of the last command and copies the next one's arguments into them: no allocation once
//! they have grown to the connection's usual commands.
//!
//! Only a complete array of plainly encoded bulk strings, of at most [`MAX_REUSED_ARGS`]
//! arguments of at most [`MAX_REUSED_ARG_BYTES`] each, is parsed here; anything else
//! (inline commands, partial input, a malformed or unusual encoding, large arguments)
//! goes to [`parse_command`], which gives the same arguments for what both accept and
//! every error for the rest. The buffers kept stay small by those two limits, and a
//! large argument parsed the slow way is dropped at the end of its dispatch pass
//! ([`Args::release_large`]).

use stator_kv::{parse_command, RespError};

/// Most arguments of a command parsed into reused buffers (a wider one, `MSET` of many
/// keys, is parsed by [`parse_command`]).
pub const MAX_REUSED_ARGS: usize = 16;

/// Largest argument copied into a reused buffer; a command with a larger one is parsed by
/// [`parse_command`]. Bounds what a connection keeps between commands (with
/// [`MAX_REUSED_ARGS`]: a few KiB beside its 16 KiB input buffer).
pub const MAX_REUSED_ARG_BYTES: usize = 256;

/// Digits of the longest count or length the fast parser reads (`MAX_REUSED_ARG_BYTES`
/// and `MAX_REUSED_ARGS` have three at most).
const MAX_FAST_DIGITS: usize = 3;

/// The arguments of the command parsed last; see the module doc.
#[derive(Default)]
pub(crate) struct Args {
    buffers: Vec<Vec<u8>>,
    len: usize,
}

impl Args {
    /// The arguments of the command parsed last.
    pub(crate) fn argv(&self) -> &[Vec<u8>] {
        &self.buffers[..self.len]
    }

    /// Parses the command at the start of `input` into these buffers: its length in
    /// bytes, `Ok(None)` when more input is needed, or [`parse_command`]'s error.
    pub(crate) fn parse(&mut self, input: &[u8]) -> Result<Option<usize>, RespError> {
        if let Some(used) = self.parse_plain_array(input) {
            return Ok(Some(used));
        }
        let Some((argv, used)) = parse_command(input)? else {
            return Ok(None);
        };
        self.len = argv.len();
        self.buffers = argv;
        Ok(Some(used))
    }

    /// Forgets the last command's arguments and drops any buffer a large command left
    /// (parsed the slow way), so an idle connection keeps only small buffers.
    pub(crate) fn release_large(&mut self) {
        self.len = 0;
        self.drop_large();
    }

    /// Keeps at most [`MAX_REUSED_ARGS`] buffers, none larger than twice
    /// [`MAX_REUSED_ARG_BYTES`] (a large one is left by a command parsed the slow way).
    fn drop_large(&mut self) {
        self.buffers.truncate(MAX_REUSED_ARGS);
        self.buffers
            .retain(|buffer| buffer.capacity() <= 2 * MAX_REUSED_ARG_BYTES);
    }

    /// The fast path: `*<n>\r\n` and `n` times `$<len>\r\n<bytes>\r\n`, counts and
    /// lengths in plain decimal, within the limits above; `None` for anything else
    /// (`parse_command` decides it then), this parser's buffers then unchanged in use.
    fn parse_plain_array(&mut self, input: &[u8]) -> Option<usize> {
        if input.first() != Some(&b'*') {
            return None;
        }
        let (count, mut at) = decimal_line(input, 1)?;
        if count == 0 || count > MAX_REUSED_ARGS {
            return None;
        }
        // Checked whole before any buffer is touched, so a fallback starts clean.
        let mut spans = [(0usize, 0usize); MAX_REUSED_ARGS];
        for span in spans.iter_mut().take(count) {
            if input.get(at) != Some(&b'$') {
                return None;
            }
            let (len, start) = decimal_line(input, at + 1)?;
            let end = start.checked_add(len)?;
            if len > MAX_REUSED_ARG_BYTES || input.get(end..end + 2)? != b"\r\n" {
                return None;
            }
            *span = (start, end);
            at = end + 2;
        }
        self.drop_large();
        if self.buffers.len() < count {
            self.buffers.resize_with(count, Vec::new);
        }
        for (buffer, &(start, end)) in self.buffers.iter_mut().zip(&spans[..count]) {
            buffer.clear();
            buffer.extend_from_slice(&input[start..end]);
        }
        self.len = count;
        Some(at)
    }
}

/// A decimal number of 1 to [`MAX_FAST_DIGITS`] digits without a leading zero (or `0`)
/// starting at `at` and ending in `\r\n`: the number and where the next line starts.
fn decimal_line(input: &[u8], at: usize) -> Option<(usize, usize)> {
    let digits = input
        .get(at..)?
        .iter()
        .take(MAX_FAST_DIGITS + 1)
        .position(|b| !b.is_ascii_digit())?;
    if digits == 0 || digits > MAX_FAST_DIGITS || (digits > 1 && input[at] == b'0') {
        return None;
    }
    let end = at + digits;
    if input.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    let value = input[at..end]
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    Some((value, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_kv::encode_command;

    /// What `Args` gives for `input`, beside what `parse_command` gives.
    fn both(args: &mut Args, input: &[u8]) {
        let expected = parse_command(input);
        let got = args
            .parse(input)
            .map(|used| used.map(|used| (args.argv().to_vec(), used)));
        assert_eq!(
            format!("{got:?}"),
            format!("{expected:?}"),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn gives_what_parse_command_gives() {
        let mut args = Args::default();
        let big = vec![b'v'; MAX_REUSED_ARG_BYTES + 1];
        let commands: Vec<Vec<Vec<u8>>> = vec![
            vec![b"SET".to_vec(), b"key:1".to_vec(), b"value".to_vec()],
            vec![b"GET".to_vec(), b"k".to_vec()],
            vec![b"SET".to_vec(), b"k".to_vec(), big.clone()],
            vec![b"SET".to_vec(), b"k".to_vec(), Vec::new()],
            vec![b"PING".to_vec()],
            (0..MAX_REUSED_ARGS + 1)
                .map(|i| i.to_string().into_bytes())
                .collect(),
            vec![
                b"SET".to_vec(),
                b"k".to_vec(),
                vec![b'x'; MAX_REUSED_ARG_BYTES],
            ],
            vec![b"DEL".to_vec(), b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
        ];
        for command in &commands {
            let encoded = encode_command(command);
            both(&mut args, &encoded);
            // Every prefix (partial input) and the command with the next one behind it.
            for cut in 0..encoded.len() {
                both(&mut args, &encoded[..cut]);
            }
            let mut two = encoded.clone();
            two.extend_from_slice(&encode_command(&commands[0]));
            both(&mut args, &two);
        }
        for odd in [
            &b"*0\r\n"[..],
            b"*-1\r\n",
            b"*1\r\n$-1\r\n",
            b"*01\r\n$1\r\na\r\n",
            b"*1\r\n$01\r\na\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*1\r\n+a\r\n",
            b"*1\n$1\r\na\r\n",
            b"*2\r\n$1\r\na\r\n",
            b"*x\r\n",
            b"PING\r\n",
            b"set k v\r\n",
            b"",
            b"*1\r\n$9999\r\nabc",
        ] {
            both(&mut args, odd);
        }
    }

    #[test]
    fn keeps_its_buffers_small() {
        let mut args = Args::default();
        let huge = encode_command(&[b"SET".to_vec(), b"k".to_vec(), vec![b'v'; 1 << 20]]);
        args.parse(&huge).unwrap().unwrap();
        args.release_large();
        assert!(args.argv().is_empty());
        assert!(args
            .buffers
            .iter()
            .all(|b| b.capacity() <= 2 * MAX_REUSED_ARG_BYTES));
        args.parse(&huge).unwrap().unwrap();
        let small = encode_command(&[b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]);
        args.parse(&small).unwrap().unwrap();
        assert_eq!(
            args.argv(),
            &[b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]
        );
        assert!(args
            .buffers
            .iter()
            .all(|b| b.capacity() <= 2 * MAX_REUSED_ARG_BYTES));
    }
}
