"""make demo, as a user runs it: every step answered as shown (the form
of conf/form.conf included), and the daemon exits 0."""

import os
import subprocess
import sys

from harness import ROOT, binary


def test_demo_runs_the_whole_conversation():
    out = subprocess.run([sys.executable, os.path.join(
        ROOT, "tests", "emulator", "demo.py"), "--daemon", binary()],
        capture_output=True, text=True, timeout=120)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    for want in ('inline     sendMessage: "Hello, Ann! I am a bot that says '
                 'hello. Try a button."  keyboard: [Hello] [Hi]',
                 'follow-up  sendMessage: "(this second message went out as '
                 'a follow-up',
                 'inline keyboard: [d4] [d6] [d8] [d12] [d20]',
                 'inline     answerCallbackQuery: "d20: ',
                 'follow-up  editMessageText: "\U0001f3b2 d20 rolled ',
                 'inline     answerCallbackQuery: "You voted for Pizza."',
                 'follow-up  editMessageText: "\U0001f4ca Lunch? (closed) / '
                 'Pizza: 1 / Sushi: 0 / 1 vote"',
                 '(keyboard removed)',
                 'SIGTERM: tgwebhookd finished and exited 0',
                 # the Simple Poll bot again, over long polling
                 'takeover = on: deleteWebhook (pending updates kept)',
                 'follow-up  answerCallbackQuery: "You voted for Tacos."',
                 'follow-up  editMessageText: "\U0001f4ca Dinner? (closed) / '
                 'Curry: 0 / Tacos: 1 / 1 vote"',
                 'the poll ended at once; tgwebhookd exited 0',
                 # the form of conf/form.conf, in configuration alone
                 'follow-up  sendMessage: "Hello, Ann. How old are you?"',
                 'inline     sendMessage: "Please send your age as a '
                 'number."',
                 'follow-up  sendMessage: "Ann, 42: is that right? '
                 '(yes/no)"',
                 'state of c31337:u31337: confirm\n'
                 '             data: {"name":"Ann","age":"42"}',
                 'follow-up  sendMessage: "Thank you, Ann. Saved."',
                 'inline     sendMessage: "Send /form to fill in the '
                 'form."',
                 'SIGTERM: tgwebhookd exited 0'):
        assert want in text, "no %r in:\n%s" % (want, text)
    for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert bad not in text, text
