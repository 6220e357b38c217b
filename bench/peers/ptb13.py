"""python-telegram-bot 13 (Debian's python3-python-telegram-bot) webhook
server for make bench, over HTTPS on the secret path with the secret-token
header (which PTB 13 does not check).  PTB 13 cannot answer inline: its webhook server answers 200 at
once and hands the update to its dispatcher, whose /start handler here
builds the same answer and would send it as a separate request (it is not
sent: no Bot API in the benchmark).
Usage: /usr/bin/python3 ptb13.py PORT CERT KEY PATH SECRET"""

import sys

from telegram import User
from telegram.ext import CommandHandler, Updater

port, cert, key, path, secret = sys.argv[1:6]
answers = 0


def start(update, context):
    global answers
    text = "Hello, %s! I am a bot that says hello." % (
        update.effective_user.first_name)
    answers += len(text) > 0


updater = Updater("110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
                  use_context=True)
# Offline: the bot is known (no getMe), and registration (setWebhook) is
# skipped.  PTB 13 does not check the secret-token header.
updater.bot._bot = User(110201543, "Bench", True, username="BenchBot")
updater._bootstrap = lambda **kw: None
updater.dispatcher.add_handler(CommandHandler("start", start))
updater.start_webhook(listen="127.0.0.1", port=int(port),
                      url_path=path.lstrip("/"), cert=cert, key=key)
updater.idle()
