"""Reply handlers answered inline: Telegram's Hello Bot as config."""

import json

from harness import Daemon, message, corpus

HELLO = """
[handler.start]
commands = /start
reply = Hello, {from.first_name}! Pick one.
params = {"reply_markup": {"keyboard": [["Hello", "Hi"]],
          "resize_keyboard": true}}

[handler.greet]
text = ^(Hello|Hi)$
reply = Hi there, {from.first_name}.

[handler.args]
commands = /echo
reply = {args}

[handler.other]
updates = message
reply = You said: {text}
"""


def test_start_inline_with_keyboard():
    with Daemon(HELLO) as d:
        status, reason, headers, body = d.deliver(message("/start", 1))
        assert status == 200, (status, body)
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        call = json.loads(body)
        assert call["method"] == "sendMessage"
        assert call["chat_id"] == 42
        assert call["text"] == "Hello, Ann! Pick one."
        assert call["reply_markup"] == {"keyboard": [["Hello", "Hi"]],
                                        "resize_keyboard": True}


def test_first_match_wins_and_text_regex():
    with Daemon(HELLO) as d:
        call = json.loads(d.deliver(message("Hi", 2))[3])
        assert call["text"] == "Hi there, Ann."
        call = json.loads(d.deliver(message("Hi!", 3))[3])
        assert call["text"] == "You said: Hi!"
        call = json.loads(d.deliver(message("/echo a b  c", 4))[3])
        assert call["text"] == "a b  c"


def test_command_after_emoji_and_botname():
    # corpus 032 is /help@SomeBot after an emoji, in wire format
    with open(__import__("harness").CORPUS +
              "/032-wire-format-ascii-escaped.json", "rb") as f:
        wire = f.read()
    handlers = "[handler.help]\ncommands = /help\nreply = help!\n"
    with Daemon(handlers, username="SomeBot") as d:
        status, _, _, body = d.deliver(wire)
        assert status == 200
        assert json.loads(body)["text"] == "help!"
    with Daemon(handlers, username="OtherBot") as d:
        status, _, _, body = d.deliver(wire)
        assert status == 200 and body == b"", body


def test_every_corpus_update_is_answered_200():
    import glob
    import os
    from harness import CORPUS
    with Daemon("[handler.any]\nupdates = message\nreply = ok\n") as d:
        for path in sorted(glob.glob(os.path.join(CORPUS, "*.json"))):
            with open(path, "rb") as f:
                raw = f.read()
            status, _, _, body = d.deliver(raw)
            assert status == 200, (path, status, body)
        log = d.log()
        assert "new_update_kind" in log


def test_user_text_never_names_a_local_file():
    # The review's attack: `reply = {args}` and a user's
    # `/say file:///.../uploads/someone-elses.pdf`.  What a user wrote is
    # text: sent as written, as JSON, never as an upload.  A file the
    # configuration names itself still goes out, ids in its name
    # included, and a user's words beside it stay words.
    import os
    d = Daemon("", start=False)
    uploads = os.path.join(d.dir, "uploads")
    os.makedirs(uploads)
    with open(os.path.join(uploads, "someone-elses.pdf"), "w") as f:
        f.write("not yours\n")
    with open(os.path.join(uploads, "welcome-42.txt"), "w") as f:
        f.write("welcome, 42\n")
    with open(d.conf, "a") as f:
        f.write("[outbox]\nupload_dir = %s\n"
                "[handler.say]\ncommands = /say\nreply = {args}\n"
                "[handler.doc]\ncommands = /doc\nreply =\n"
                "method = sendDocument\n"
                "params = {\"document\": \"file://%s/welcome-{chat_id}.txt\","
                " \"caption\": \"{args}\"}\n" % (uploads, uploads))
    secret = "file://%s/someone-elses.pdf" % uploads
    with d:
        d.start()
        # plain text, so it may even go inline: no upload to make
        status, _, _, body = d.deliver(message("/say " + secret, 1))
        assert status == 200
        assert json.loads(body) == {"method": "sendMessage", "chat_id": 42,
                                    "text": secret}, body
        status, _, _, _ = d.deliver(message("/doc " + secret, 2))
        doc = d.emu.wait_calls("sendDocument", 1)[0]
        assert doc.files == {"document": ("welcome-42.txt",
                                          b"welcome, 42\n")}, doc.files
        assert doc.params["caption"] == secret
        assert "tgwebhookd_text_params" not in doc.params
        assert b"not yours" not in b"".join(v[1] for v in doc.files.values())


def test_text_pattern_gives_up_at_its_bound_and_the_next_handler_answers():
    # the review's pattern: 9.5 s of CPU on 4096 bytes with glibc's regexec
    handlers = ("[handler.hostile]\ntext = [ab]*a[ab]{20}c\nreply = hostile\n"
                "[handler.fallback]\nupdates = message\nreply = fallback\n")
    from test_service import metrics
    with Daemon(handlers) as d:
        text = "a" * 4074 + "b" * 21 + "c"
        status, _, _, body = d.deliver(message(text, 1))
        assert status == 200, (status, body)
        assert json.loads(body)["text"] == "fallback"
        # an ordinary text still matches it
        status, _, _, body = d.deliver(message("xa" + "b" * 20 + "c", 2))
        assert json.loads(body)["text"] == "hostile"
        m = metrics(d)
        assert m['tgwebhookd_text_match_limit_total{handler="hostile"}'] == 1
        d.wait_log("gave up at its work bound")
        line = [l for l in d.log().splitlines() if "work bound" in l][0]
        assert "warning: [handler.hostile]" in line, line
        assert "4096 bytes" in line, line
        assert "aaaa" not in d.log()


def test_bad_text_pattern_names_file_line_and_offset():
    import subprocess
    from harness import binary
    with Daemon("[handler.bad]\ntext = ^(Hello|Hi$\nreply = x\n",
                start=False) as d:
        out = subprocess.run([binary(), "-c", d.conf, "-t"],
                             capture_output=True, env=d.env, timeout=20)
        assert out.returncode == 1
        line = [l for l in out.stderr.decode().splitlines() if "text:" in l]
        assert len(line) == 1, out.stderr
        want = (": text: bad regular expression at offset 11: missing "
                "closing parenthesis")
        assert line[0].startswith(d.conf + ":") and want in line[0], line
