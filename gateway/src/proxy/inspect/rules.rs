//! The rules: stable ids, classes, and patterns over normalised text.
//!
//! Patterns see what [`super::normalize`] made of a part: lower case, `\` as `/`, whitespace
//! runs as one space (or one line break), entities and escapes decoded. They are compiled
//! together into one `RegexSet` over bytes, ASCII only, so a clean part costs one pass of a
//! lazy DFA whatever the number of rules. `^` and `$` are the start and end of the part (one
//! query value, one cookie value, one header value, a path, a body).
//!
//! Each rule looks for what makes an attack work rather than for words: a quote that closes a
//! string and then a comparison, a statement after `;`, a tag that runs script, a `..`
//! segment, a command after a shell separator. English that uses the same words ("select a
//! plan", "union station", "O'Brien", "tom & jerry", "drop-down") has none of that structure.
//! Where a rule still has a plausible false positive it says so; such a rule can be turned off
//! per route by its id (`disable = ["sqli-008"]`).

/// A class of attack; the label of `gateway_inspection_findings_total`.
pub const SQLI: &str = "sqli";
pub const XSS: &str = "xss";
pub const TRAVERSAL: &str = "traversal";
pub const CMDI: &str = "cmdi";
pub const NULL_BYTE: &str = "null-byte";
/// Code run by the server: Log4Shell lookups, Java expression and OGNL gadgets.
pub const RCE: &str = "rce";
/// Server-side template injection.
pub const SSTI: &str = "ssti";
/// XML external entities and XInclude.
pub const XXE: &str = "xxe";
/// NoSQL (MongoDB) query operators and server-side JavaScript.
pub const NOSQLI: &str = "nosqli";
/// Requests for cloud metadata and unusual URL schemes a server may be made to fetch.
pub const SSRF: &str = "ssrf";
/// A line break that starts a response header (response splitting).
pub const CRLF: &str = "crlf";
/// Server-side includes.
pub const SSI: &str = "ssi";
/// LDAP filter injection.
pub const LDAPI: &str = "ldapi";
pub const LIMIT: &str = "limit";

pub const CLASSES: &[&str] = &[
    SQLI, XSS, TRAVERSAL, CMDI, NULL_BYTE, RCE, SSTI, XXE, NOSQLI, SSRF, CRLF, SSI, LDAPI, LIMIT,
];

/// Where a rule applies: a bit per kind of part.
pub const IN_ALL: u8 = 0xff;
/// XML bodies, whose element names are the application's: `<object>` is no attack there.
pub const IN_XML: u8 = 1;
/// Text and JSON bodies and body parts: prose, where a line may well begin `Content-Type:`.
pub const IN_TEXT: u8 = 2;
/// Fields: the path, query parameters, header and cookie values, form fields.
pub const IN_FIELD: u8 = 4;
pub const NOT_XML: u8 = IN_ALL & !IN_XML;

#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    pub class: &'static str,
    /// What it catches, for the documentation and the tests.
    pub what: &'static str,
    /// `None` for the rules that are not patterns: NUL bytes, body size.
    pub pattern: Option<&'static str>,
    /// Bit set of the parts it applies to (`IN_XML`, ...).
    pub applies: u8,
}

/// Commands that are not English words: after a shell separator they are an attack.
macro_rules! commands_rare {
    () => {
        "whoami|uname|wget|curl|ncat|netcat|nslookup|ifconfig|ipconfig|netstat|mkfifo|\
         systeminfo|tasklist|taskkill|certutil|bitsadmin|powershell(?:\\.exe)?|pwsh|busybox|\
         socat|printenv|chmod|chown|nohup|xterm|cmd\\.exe|wmic|rundll32|regsvr32|mshta|\
         /(?:usr/)?s?bin/[a-z0-9_.-]+"
    };
}

/// Commands that are also words ("cat", "id", "sleep"): an attack only with an argument that
/// looks like one (`-x`, `/path`, `.`, `$VAR`, a number, a quote), or at the end of the part.
macro_rules! commands_common {
    () => {
        "cat|ls|id|nc|bash|sh|zsh|ksh|csh|tcsh|dash|python[23]?|perl|ruby|php|lua|node|ping|\
         sleep|echo|rm|telnet|ps|env|dir|type|net|find|head|tail|more|less|grep|awk|sed|kill|\
         ftp|tftp|ssh|scp|tar|base64|xargs|cp|mv|touch|pwd|hostname|crontab|sudo|su|cmd|tee|\
         exec|eval|source|export"
    };
}

/// Event handler attributes (after `on`).
macro_rules! handlers {
    () => {
        "abort|afterprint|animation[a-z]*|auxclick|before[a-z]+|begin|blur|bounce|cancel|\
         canplay[a-z]*|change|click|close|content[a-z]+|contextmenu|copy|cuechange|cut|\
         dblclick|drag[a-z]*|drop|durationchange|emptied|end|ended|error|finish|focus[a-z]*|\
         formdata|fullscreen[a-z]+|gesture[a-z]+|hashchange|input|invalid|key[a-z]+|load[a-z]*|\
         message[a-z]*|mouse[a-z]+|mozfullscreen[a-z]+|offline|online|pagehide|pageshow|paste|\
         pause|play[a-z]*|pointer[a-z]+|popstate|progress|ratechange|readystatechange|repeat|\
         reset|resize|scroll[a-z]*|search|seek[a-z]+|select[a-z]*|show|slotchange|stalled|\
         start|storage|submit|suspend|timeupdate|toggle|touch[a-z]+|transition[a-z]+|\
         unhandledrejection|unload|volumechange|waiting|webkit[a-z]+|wheel"
    };
}

/// The rules in the order they are reported when several match.
pub const RULES: &[Rule] = &[
    Rule {
        id: "sqli-001",
        class: SQLI,
        what: "tautology: a quote or a number, then OR/AND and a comparison or a boolean \
               (' or 1=1--, ' OR 'a'='a, \" or \"\"=\", 1 or 1=1, ') or true--)",
        pattern: Some(concat!(
            r#"['"`]\s*\)*\s*(?:or|and|xor|\|\||&&)\s*\(*\s*['"`]?[\w.@$-]*['"`]?\s*(?:=|!=|<>|<=>|<=|>=|<|>|is\s+(?:not\s+)?null\b|like\s+['"])"#,
            r#"|['"`]\s*\)*\s*(?:or|and|xor|\|\|)\s+(?:not\s+)?(?:true|false|null|\d+)\s*(?:--|#|/\*|;|\)|$)"#,
            r#"|(?:^|[='"(:,])\s*-?\d+['"`)]*\s+(?:or|and|xor|\|\||&&)\s+\(*\s*(?:-?\d+|'[^']*'|"[^"]*")\s*(?:=|!=|<>|<=>|<=|>=|<|>)\s*\(*\s*(?:-?\d|'|")"#,
            r#"|\b(?:or|and|xor)\s+\(*\s*-?\d+\s*(?:=|!=|<>|<=|>=|<|>)\s*-?\d+\s*\)*\s*(?:--|#|/\*|;|$)"#,
            r#"|(?:^|[=(])\s*-?\d+\s*\)*\s+(?:or|and|xor|\|\||&&)\s+(?:not\s+)?(?:true|false)\s*(?:--|#|/\*|;|\)|$)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-002",
        class: SQLI,
        what: "a quote that ends the query with a comment (admin'--, admin'#, admin'/*, 1';--)",
        pattern: Some(concat!(
            r#"'\s*\)*\s*(?:--|/\*|#(?:\s|$)|;\s*(?:--|#|$))"#,
            r#"|"\s*\)*\s*(?:--(?:\s|$)|#(?:\s|$))"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-003",
        class: SQLI,
        what: "UNION [ALL|DISTINCT] SELECT, also with comments or parentheses between",
        pattern: Some(r"\bunion\s*(?:all\s*|distinct\s*)?\(*\s*select\b"),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-004",
        class: SQLI,
        what: "stacked query: ; then a statement (; DROP TABLE, ; DELETE FROM, ; EXEC xp_, \
               '; SELECT, ; SHUTDOWN)",
        pattern: Some(concat!(
            r#";\s*(?:drop\s+(?:table|database|schema|view|user|procedure|function|index)\b"#,
            r#"|truncate\s+table\b|alter\s+(?:table|user|database)\b"#,
            r#"|create\s+(?:table|user|database|procedure|function|trigger)\b"#,
            r#"|delete\s+from\b|insert\s+into\b|update\s+[\w.`"\[\]]+\s+set\s"#,
            r#"|exec(?:ute)?\s+(?:xp_|sp_|master\.)|declare\s+@|shutdown\b|waitfor\s+delay\b"#,
            r#"|select\s+(?:\*|@@|null\b|\d|(?:count|concat|group_concat|version|user|database|sleep|pg_sleep|char|load_file)\s*\())"#,
            r#"|['"`]\s*\)*\s*;\s*(?:select|insert|update|delete|drop|alter|create|truncate|exec|execute|declare|shutdown|waitfor|grant|revoke)\b"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-005",
        class: SQLI,
        what: "time-based blind injection (SLEEP(5), pg_sleep(, BENCHMARK(n,, WAITFOR DELAY ')",
        pattern: Some(concat!(
            r#"\b(?:sleep\s*\(\s*(?:\d+(?:\.\d+)?\s*\)|if\s*\(|select\b|\()"#,
            r#"|pg_sleep\s*\(|benchmark\s*\(\s*\d+\s*,|waitfor\s+(?:delay|time)\s+['"]"#,
            r#"|dbms_lock\.sleep\s*\(|dbms_pipe\.receive_message\s*\(|randomblob\s*\(\s*\d{5})"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-006",
        class: SQLI,
        what: "database internals and injection helpers (information_schema, @@version, \
               extractvalue(, load_file(, xp_cmdshell, INTO OUTFILE, concat(0x.., char(n)+char()",
        pattern: Some(concat!(
            r#"\b(?:information_schema|mysql\.user|pg_catalog|pg_shadow|sqlite_master|sysobjects|syscolumns|msysaccessobjects)\b"#,
            r#"|\bfrom\s+(?:all_tables|user_tables|dual\b|sys\.(?:tables|objects|databases|sql_logins))"#,
            r#"|@@(?:version|datadir|hostname|basedir|servername|tmpdir)\b"#,
            r#"|\b(?:extractvalue|updatexml|load_file|sp_executesql|utl_http\.request|utl_inaddr\.get_host_address|dbms_xmlgen\.getxml|xp_dirtree|sys_eval|sys_exec)\s*\("#,
            r#"|\bxp_cmdshell\b|\binto\s+(?:out|dump)file\b"#,
            r#"|\b(?:concat|concat_ws|group_concat|make_set|elt)\s*\(\s*(?:0x[0-9a-f]+|char\s*\(|@@|version\s*\(|user\s*\(|database\s*\(|schema\s*\()"#,
            r#"|\b(?:char|chr|nchar)\s*\(\s*\d+\s*\)\s*(?:\+|\|\||,)?\s*(?:char|chr|nchar)\s*\("#,
            r#"|\bchar\s*\(\s*\d+\s*(?:,\s*\d+\s*){3,}\)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-007",
        class: SQLI,
        what: "a quote, then a clause (' ORDER BY 3, ' HAVING 1=1, ' AND (SELECT, '||(SELECT, \
               ' AND EXISTS()",
        pattern: Some(concat!(
            r#"['"`]\s*\)*\s*(?:(?:order|group)\s+by\s+\d|having\s+\(*\d|procedure\s+analyse"#,
            r#"|into\s+(?:@|outfile|dumpfile)|(?:and|or|xor|\|\||&&|\+|\||-)?\s*\(+\s*select\b"#,
            r#"|(?:and|or)\s+(?:not\s+)?exists\s*\()"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "sqli-008",
        class: SQLI,
        what: "a whole SQL statement (SELECT * / SELECT NULL, / SELECT count(, INSERT INTO t \
               VALUES, DELETE FROM t WHERE, DROP TABLE t;, UPDATE t SET c=); may match SQL \
               sent on purpose, e.g. to a query console",
        pattern: Some(concat!(
            r#"\bselect\s+(?:\*|null\s*,|(?:count|group_concat|concat|version|database|user|schema|load_file|char)\s*\()"#,
            r#"|\binsert\s+into\s+[\w.`"\[\]]+\s*(?:\(|values\b|select\b)"#,
            r#"|\bdelete\s+from\s+[\w.`"\[\]]+\s+where\b"#,
            r#"|\bdrop\s+(?:table|database|schema)\s+(?:if\s+exists\s+)?[\w`"\[.]+\s*(?:;|--|#|$)"#,
            r#"|\bupdate\s+[\w.`"\[\]]+\s+set\s+[\w.`"\[\]]+\s*="#,
            r#"|\bexec(?:ute)?\s+(?:xp_|sp_|master\.\.)"#,
            r#"|\bhaving\s+\d+\s*(?:=|<|>)\s*\d+|\border\s+by\s+\d+\s*(?:--|#|/\*)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "xss-001",
        class: XSS,
        what: "a script element (<script, </script, also encoded, entity-encoded, fullwidth)",
        pattern: Some(r"<[\s/]*script\b"),
        applies: IN_ALL,
    },
    Rule {
        id: "xss-002",
        class: XSS,
        what: "an event handler attribute in a tag (<img src=x onerror=, <svg/onload=) or \
               after a quote that closes an attribute (\" onmouseover=)",
        pattern: Some(concat!(
            r#"<[a-z!/?][^>]*[\s"'/`;]on(?:"#,
            handlers!(),
            r#")\s*="#,
            r#"|['"`]\s*/?\s*on(?:"#,
            handlers!(),
            r#")\s*="#,
            r#"|(?:^|\s)on(?:error|load|mouseover|mouseenter|focus|click|animationstart|toggle|pointerover|begin|blur)\s*=\s*\S"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "xss-003",
        class: XSS,
        what: "a script URL (javascript:, also with spaces or tabs between its letters, \
               vbscript:, data:text/html)",
        pattern: Some(concat!(
            r#"j\s*a\s*v\s*a\s*s\s*c\s*r\s*i\s*p\s*t\s*:(?:\S|\s+[\w$.\[\]'"]+\s*[(`=])"#,
            r#"|\b(?:vb|live)script\s*:"#,
            r#"|\bdata\s*:\s*(?:text/html|text/xml|application/xhtml|image/svg\+xml|(?:text|application)/(?:x-)?(?:java|ecma)script)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "xss-004",
        class: XSS,
        what: "an element that loads or runs content (<iframe, <object, <embed, <base, \
               <meta http-equiv, <link rel=import, <style> with expression(); not in XML bodies",
        pattern: Some(concat!(
            r#"<\s*(?:iframe|frame|frameset|object|embed|applet|isindex|base|xss|import)\b"#,
            r#"|<\s*meta\b[^>]*(?:http-equiv|charset\s*=\s*['"]?utf-7)"#,
            r#"|<\s*link\b[^>]*(?:rel\s*=\s*['"]?import|href\s*=\s*['"]?\s*(?:javascript|data):)"#,
            r#"|<\s*style\b[^>]*>[^<]*(?:expression\s*\(|@import|javascript:|-moz-binding|behavior\s*:)"#,
        )),
        applies: NOT_XML,
    },
    Rule {
        id: "xss-005",
        class: XSS,
        what: "script calls and sinks (alert(, prompt(, confirm(, eval(, alert`1`, \
               document.cookie, String.fromCharCode(, window['..'], srcdoc=, CSS expression()",
        pattern: Some(concat!(
            r#"\b(?:alert|prompt|confirm|eval)(?:\(|`)"#,
            r#"|\b(?:window|top|self|parent|frames|globalthis)\s*\[\s*['"`]"#,
            r#"|\bdocument\s*\.\s*(?:cookie|domain|write(?:ln)?\s*\()"#,
            r#"|\.\s*fromcharcode\s*\(|\b(?:settimeout|setinterval)\s*\(\s*['"`]"#,
            r#"|\bsrcdoc\s*=|\bexpression\s*\(|-moz-binding\s*:"#,
            r#"|\blocation\s*(?:\.\s*href\s*)?=\s*['"`]?\s*(?:javascript|data):"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "xss-006",
        class: XSS,
        what: "UTF-7 encoded markup (+ADw-script+AD4-)",
        pattern: Some(r"[+\s]adw-[^\n]*[+\s]ad4-"),
        applies: IN_ALL,
    },
    Rule {
        id: "trav-001",
        class: TRAVERSAL,
        what: "a .. segment after decoding (../, ..\\, %2e%2e%2f, %252e, %c0%ae, %e0%80%ae, \
               %c0%af, %u002e, %u2215, ..;/, ....//)",
        pattern: Some(concat!(
            r#"(?:^|[/=:;,(])\.\.(?:[/;]|$)"#,
            r#"|(?:^|[/=:;,(])\.{3,}/"#,
            r#"|["'\s]\.{2,}/"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "trav-002",
        class: TRAVERSAL,
        what: "a well-known sensitive file (/etc/passwd, /etc/shadow, /proc/self/environ, \
               c:\\windows\\win.ini, boot.ini, WEB-INF/, .ssh/id_rsa, .htpasswd, /.env, \
               /.git/config)",
        pattern: Some(concat!(
            r#"/etc/(?:passwd|shadow|group|gshadow|hosts|hostname|issue|motd|sudoers|crontab|fstab|os-release|resolv\.conf|ssh/|security/|mysql/|apache2/|nginx/|httpd/)"#,
            r#"|/proc/(?:self|\d+)/(?:environ|cmdline|maps|fd|status|exe|cwd|root|mem)"#,
            r#"|(?:^|[/\s"'=:])(?:[a-z]:)?/?(?:windows|winnt)/(?:win\.ini|system\.ini|system32/)"#,
            r#"|\b(?:boot|win)\.ini\b|\b(?:web|meta)-inf/"#,
            r#"|/\.(?:ssh/(?:id_[a-z0-9]+|authorized_keys|known_hosts)|aws/credentials|docker/config\.json|kube/config|bash_history|git/(?:config|head)\b|htpasswd|htaccess|env\b)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "trav-003",
        class: TRAVERSAL,
        what: "a local file or stream wrapper URL (file://, php://filter, phar://, zip://, \
               expect://, glob://)",
        pattern: Some(
            r#"\b(?:file|php|zip|phar|expect|glob|jar|netdoc|compress\.zlib|compress\.bzip2)://"#,
        ),
        applies: IN_ALL,
    },
    Rule {
        id: "cmdi-001",
        class: CMDI,
        what: "a command after a shell separator (;id, | nc host 4444, && whoami, || cat /x, \
               %0a ls -la, & ping -n 3)",
        pattern: Some(concat!(
            r#"(?:;|&|\||\n)\s*(?:"#,
            commands_rare!(),
            r#")\b"#,
            r#"|(?:;|&|\||\n)\s*(?:"#,
            commands_common!(),
            r#")(?:\s+[-/.~$'"\\]|\s+\d|\s+[a-z]:/|\s+#(?:\s|$)|\s*$|\s*[;&<>`'")])"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "cmdi-002",
        class: CMDI,
        what: "command substitution with a command ($(id), $(sleep 5))",
        pattern: Some(concat!(
            r#"\$\(\s*(?:"#,
            commands_rare!(),
            "|",
            commands_common!(),
            r#")\b"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "cmdi-003",
        class: CMDI,
        what: "a command in backticks (`id`, `cat /etc/passwd`); also matches Markdown code \
               spans that name a command",
        pattern: Some(concat!(
            r#"`\s*(?:"#,
            commands_rare!(),
            "|",
            commands_common!(),
            r#")\b[^`]*`"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "cmdi-004",
        class: CMDI,
        what: "shell tricks and reverse shells (${IFS}, /dev/tcp/, () { :; }; (Shellshock), nc -e, bash -i, sh -c, \
               /bin/sh, powershell -enc, cmd /c, curl .. | sh, {cat,/etc/passwd}, /???/??t)",
        pattern: Some(concat!(
            r#"\$\{?ifs\b|/dev/(?:tcp|udp)/|\(\s*\)\s*\{\s*:?\s*;?\s*\}\s*;"#,
            r#"|\bn(?:c|cat|etcat)\s+(?:-[a-z]*[ec]\b|[^;|&\n]*\s-[a-z]*e\s)"#,
            r#"|\b(?:ba|z|k|da)?sh\s+-[a-z]*[ic]\b"#,
            r#"|/bin/(?:ba|z|k|da|tc|c)?sh\b"#,
            r#"|\bpowershell(?:\.exe)?\s+[-/](?:e|enc|encodedcommand|nop|noprofile|w|windowstyle|c|command|exec|executionpolicy)\b"#,
            r#"|\bcmd(?:\.exe)?\s+/[ck]\s"#,
            r#"|\b(?:curl|wget)\s[^|;&\n]*\|\s*(?:ba|z|da)?sh\b"#,
            r#"|\{\s*(?:"#,
            commands_rare!(),
            r#"|cat|ls|nc|bash|sh|ping|sleep|echo|rm|python[23]?|perl)\s*,\s*[-/.$~]"#,
            r#"|(?:/[a-z]*\?+[a-z?]*){2}"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "rce-001",
        class: RCE,
        what: "a Log4Shell lookup (${jndi:ldap://, ${lower:j}, ${::-j}${::-n}.., jndi:rmi:)",
        pattern: Some(concat!(
            r#"\$\{\s*(?:jndi|lower|upper|env|sys|java|date|main|base64|ctx|marker|bundle|spring|k8s|docker|log4j|web|event|sd|map|jvmrunargs)\s*:"#,
            r#"|\$\{\s*:*-[a-z$]"#,
            r#"|\bjndi\s*:\s*(?:ldaps?|rmi|dns|iiop|corba|nis|nds|https?)\s*:"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "rce-002",
        class: RCE,
        what: "Java expression, OGNL and SpEL gadgets (T(java.lang.Runtime), \
               Runtime.getRuntime().exec(, new java.lang.ProcessBuilder, #_memberAccess, \
               %{(#, Class.forName()",
        pattern: Some(concat!(
            r#"\bt\s*\(\s*java\.|java\.lang\.(?:runtime|processbuilder)\b"#,
            r#"|\bruntime\s*\.\s*getruntime\s*\(|\bnew\s+(?:java\.lang\.)?processbuilder\s*\("#,
            r#"|\bclass\s*\.\s*forname\s*\(|\.\s*getclass\s*\(\s*\)\s*\.\s*forname\b"#,
            r#"|#\s*_memberaccess\b|%\{\s*\(\s*#|@java\.lang\.|\bjavax?\.script\.scriptenginemanager\b"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "ssti-001",
        class: SSTI,
        what: "template expressions ({{7*7}}, ${7*7}, #{7*7}, <%= 7*7 %>, {{''.__class__}}, \
               {{config.items()}}, <#assign, freemarker Execute, {{constructor.constructor(})",
        pattern: Some(concat!(
            r#"(?:\{\{|\$\{|#\{|<%=?)\s*-?\d+\s*[*+/-]\s*-?\d+\s*(?:\}|%>)"#,
            r#"|\{[{%][^}]*(?:__class__|__mro__|__subclasses__|__globals__|__builtins__|__import__|__init__|config\.items|request\.application|self\._|lipsum|cycler|joiner|\|\s*attr\s*\()"#,
            r#"|<#assign\b|freemarker\.template\.utility\.(?:execute|objectconstructor)|\?new\s*\(\s*\)\s*\("#,
            r#"|#set\s*\(\s*\$[\w]+\s*=[^)]*\.getclass\s*\(|\bconstructor\s*\.\s*constructor\s*\("#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "xxe-001",
        class: XXE,
        what: "an external entity or a DTD with an internal subset (<!ENTITY x SYSTEM, \
               <!DOCTYPE r [, <!DOCTYPE r SYSTEM), XInclude",
        pattern: Some(concat!(
            r#"<!entity\s+(?:%\s*)?[^\s>]+\s+(?:system|public)\b"#,
            r#"|<!doctype\s+[^\s>\[]+\s*(?:\[|system\b)"#,
            r#"|<\s*xi\s*:\s*include\b|\bxmlns\s*:\s*xi\s*=\s*['"]?http://www\.w3\.org/2001/xinclude"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "nosqli-001",
        class: NOSQLI,
        what: "MongoDB query operators where data belongs (user[$ne]=, {\"$gt\": \"\"}, \
               $where) and server-side JavaScript (';return true;//, db.users.find(); \
               may match a query API that takes operators on purpose",
        pattern: Some(concat!(
            r#"(?:^|\[|['"]\s*)\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|expr|or|and|not|nor|elemmatch|function|accumulator|lookup)\s*(?:\]|$|['"]\s*:)"#,
            r#"|['"]\s*;\s*return\s+(?:true|false|1|this\b|db\.)|\bdb\.[a-z_]+\.(?:find|findone|drop|insert|remove|update|deletemany)\s*\("#,
            r#"|\bthis\.[a-z_]+\.match\s*\(\s*/"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "ssrf-001",
        class: SSRF,
        what: "cloud metadata addresses (169.254.169.254 in any notation, \
               metadata.google.internal, 100.100.100.200, fd00:ec2::254, /latest/meta-data) \
               and gopher:// or dict:// URLs",
        pattern: Some(concat!(
            r#"\b169\.254\.169\.254\b|\b2852039166\b|\b0xa9fea9fe\b|\b0251\.0376\.0251\.0376\b"#,
            r#"|\bmetadata\.(?:google\.internal|azure\.com)\b|\b100\.100\.100\.200\b|\bfd00:ec2::254\b"#,
            r#"|\binstance-data\.ec2\.internal\b|/latest/(?:meta-data|user-data|api/token)\b|/computemetadata/v1\b"#,
            r#"|\b(?:gopher|dict)://"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "crlf-001",
        class: CRLF,
        what: "a line break, then a response header or status line (%0d%0aSet-Cookie:, \
               %0aLocation: http://, %0d%0aContent-Length:, \\r\\nHTTP/1.1 200); in fields \
               only, not in text bodies",
        pattern: Some(concat!(
            r#"\n\s*(?:set-cookie\s*:|location\s*:\s*(?:[a-z][a-z0-9+.-]*:|/)|content-(?:length|type)\s*:"#,
            r#"|transfer-encoding\s*:|refresh\s*:\s*\d|access-control-allow-[a-z-]+\s*:|x-xss-protection\s*:"#,
            r#"|http/\d(?:\.\d)?\s+\d{3}\b)"#,
        )),
        applies: IN_FIELD,
    },
    Rule {
        id: "ssi-001",
        class: SSI,
        what: "a server-side include directive (<!--#exec cmd=, <!--#include virtual=)",
        pattern: Some(r#"<!--\s*#\s*(?:exec|include|echo|config|printenv|set|fsize|flastmod|if|elif)\b"#),
        applies: NOT_XML,
    },
    Rule {
        id: "ldapi-001",
        class: LDAPI,
        what: "an LDAP filter closed and another opened (*)(uid=*, )(|(cn=*, admin)(&))",
        pattern: Some(concat!(
            r#"\)\s*\(\s*[|&!]?\s*\(?\s*(?:uid|cn|sn|ou|dc|mail|objectclass|objectcategory|userpassword|password|samaccountname|userprincipalname|memberof|member|givenname|displayname|description|telephonenumber|name|user|username|homedirectory)\s*[~<>]?="#,
            r#"|\*\s*\)\s*\(|\)\s*\(\s*[|&]\s*\)"#,
        )),
        applies: IN_ALL,
    },
    Rule {
        id: "null-001",
        class: NULL_BYTE,
        what: "a NUL byte, in any encoding (%00, %2500, %c0%80, \\u0000, &#0;)",
        pattern: None,
        applies: IN_ALL,
    },
    Rule {
        id: "limit-001",
        class: LIMIT,
        what: "a body longer than max_body_bytes, with body_over_limit = \"finding\"",
        pattern: None,
        applies: IN_ALL,
    },
    Rule {
        id: "limit-002",
        class: LIMIT,
        what: "a body the inspector cannot read: a Content-Encoding other than gzip or deflate, \
               several, or one that does not inflate",
        pattern: None,
        applies: IN_ALL,
    },
];

const _: () = assert!(RULES.len() <= 64, "rule sets are u64 masks");

/// The index of the rule `id`.
pub fn index(id: &str) -> Option<usize> {
    RULES.iter().position(|r| r.id == id)
}
