//! The command names a shell command line runs, told from its text without running it: a small
//! lexer that follows sh's quoting, and the first word of each simple command. Pure: no process,
//! no file; `doctor` looks the names up.

/// The command names a shell command line runs, as far as they can be told without running it:
/// the first word of each simple command of its lists and pipelines (`a && b | c; d`), after
/// variable assignments, reserved words (`if`, `!`, `{`, …) and wrappers (`env`, `exec`,
/// `command`, `nohup`, `nice`, `time`). A word with an expansion (`$`, backquotes, `*`, `?`)
/// cannot be told and is left out; `for` and `case` end the analysis.
pub fn command_names(line: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut at_start = true;
    let mut after_wrapper = false;
    let mut skip_next = false;
    for token in tokens(line) {
        let word = match token {
            Token::Redirect => {
                skip_next = true;
                continue;
            }
            Token::Operator => {
                at_start = true;
                after_wrapper = false;
                continue;
            }
            Token::Word { text, expanded } => {
                if skip_next {
                    skip_next = false;
                    continue;
                }
                if !at_start {
                    continue;
                }
                if expanded {
                    at_start = false;
                    continue;
                }
                text
            }
        };
        let assignment = word.split_once('=').is_some_and(|(name, _)| is_name(name));
        match word.as_str() {
            _ if assignment => {}
            _ if after_wrapper && word.starts_with('-') => {
                // `nice -n 5 cmd`, `env -u NAME cmd`: these options take a value.
                skip_next = matches!(word.as_str(), "-n" | "-u");
            }
            "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "(" => {}
            "fi" | "done" | "esac" | "}" => at_start = false,
            "for" | "case" | "select" | "function" => break,
            "exec" | "command" | "nohup" | "nice" | "env" | "time" => after_wrapper = true,
            _ => {
                if !names.contains(&word) {
                    names.push(word);
                }
                at_start = false;
                after_wrapper = false;
            }
        }
    }
    names
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, PartialEq)]
enum Token {
    Word {
        text: String,
        expanded: bool,
    },
    /// `;`, `&&`, `||`, `|`, `&`, `(`, `)`, a newline: a new command may start after it.
    Operator,
    /// `>`, `>>`, `<`, `2>&1`, …: the next word is a file, not a command.
    Redirect,
}

/// Splits a shell command line into words and operators, following sh's quoting.
fn tokens(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let mut expanded = false;
    let end_word =
        |word: &mut String, in_word: &mut bool, expanded: &mut bool, out: &mut Vec<Token>| {
            if *in_word {
                out.push(Token::Word {
                    text: std::mem::take(word),
                    expanded: *expanded,
                });
            }
            *in_word = false;
            *expanded = false;
        };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut expanded, &mut out),
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push(Token::Operator);
            }
            '\n' | ';' | '(' | ')' => {
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                out.push(Token::Operator);
            }
            '&' | '|' => {
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                if c == '&' && chars.peek() == Some(&'>') {
                    chars.next();
                    out.push(Token::Redirect);
                } else {
                    if chars.peek() == Some(&c) {
                        chars.next();
                    }
                    out.push(Token::Operator);
                }
            }
            '<' | '>' => {
                // A file descriptor number right before the redirection (`2>`) is not a word.
                if in_word && !expanded && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                if matches!(chars.peek(), Some('>' | '<' | '&' | '|')) {
                    let next = chars.next();
                    // `2>&1`: the target is a descriptor, consumed as the redirect's word.
                    if next == Some('&') {
                        while chars
                            .peek()
                            .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                        {
                            chars.next();
                        }
                        continue;
                    }
                }
                out.push(Token::Redirect);
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        '$' | '`' => {
                            expanded = true;
                            word.push(c);
                        }
                        _ => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(n) => word.push(n),
                }
            }
            '$' | '`' | '*' | '?' => {
                in_word = true;
                expanded = true;
                word.push(c);
                // `$(...)`, `${...}`, `` `...` ``: skip to the end, whatever it holds.
                let close = match (c, chars.peek()) {
                    ('$', Some('(')) => Some(')'),
                    ('$', Some('{')) => Some('}'),
                    ('`', _) => Some('`'),
                    _ => None,
                };
                if let Some(close) = close {
                    let open = if c == '`' { None } else { chars.next() };
                    let mut depth = 1;
                    for n in chars.by_ref() {
                        if Some(n) == open {
                            depth += 1;
                        } else if n == close {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut expanded, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::command_names;

    fn names(line: &str) -> Vec<String> {
        command_names(line)
    }

    #[test]
    fn finds_the_commands_of_a_command_line() {
        assert_eq!(names("cargo test --quiet"), ["cargo"]);
        assert_eq!(names("RUST_LOG=1 FOO='a b' cargo test"), ["cargo"]);
        assert_eq!(
            names("cd sub && make -j4 || exit 1"),
            ["cd", "make", "exit"]
        );
        assert_eq!(
            names("npm test 2>&1 | tee out.log; echo done"),
            ["npm", "tee", "echo"]
        );
        assert_eq!(
            names("./scripts/check.sh > /tmp/x 2>/dev/null"),
            ["./scripts/check.sh"]
        );
        assert_eq!(names("env -u HOME X=1 nice -n 5 pytest -q"), ["pytest"]);
        assert_eq!(names("exec 'my tool' --flag"), ["my tool"]);
        assert_eq!(names("if test -f x; then make; fi"), ["test", "make"]);
        assert_eq!(names("(cd a; make) && { b; }"), ["cd", "make", "b"]);
        assert_eq!(names("! grep -q x \"$F\" # comment: nope"), ["grep"]);
        assert_eq!(names("\"$CARGO\" test && true"), ["true"]);
        assert_eq!(names("$(which cargo) test"), Vec::<String>::new());
        assert_eq!(
            names("for f in a b; do lint $f; done"),
            Vec::<String>::new()
        );
        assert_eq!(names("sh check.sh"), ["sh"]);
        assert_eq!(names("echo a\\ b; make"), ["echo", "make"]);
    }
}
