// Telegraf webhook server for make bench: /start answered inline (webhook
// reply) with the reply handler's text, over HTTPS, only on the secret path
// with the secret-token header.  Telegraf 4 makes webhook replies only for
// a few methods, not sendMessage, so the handler writes the answer on the
// webhook response itself, as Telegraf's own answerToWebhook does.
// Usage: node telegraf.js PORT CERT KEY PATH SECRET
"use strict";
const fs = require("fs");
const https = require("https");
const { Telegraf } = require("telegraf");

const [port, cert, key, path, secret] = process.argv.slice(2);
const bot = new Telegraf("110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw");
bot.botInfo = { id: 110201543, is_bot: true, first_name: "Bench",
                username: "BenchBot" };
bot.start((ctx) => {
  const res = ctx.telegram.response;
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({
    method: "sendMessage", chat_id: ctx.chat.id,
    text: `Hello, ${ctx.from.first_name}! I am a bot that says hello.`,
  }));
});
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
  bot.webhookCallback(path, { secretToken: secret }))
  .listen(Number(port), "127.0.0.1");
