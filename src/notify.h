/*
 * notify.h: systemd's service notification protocol ($NOTIFY_SOCKET, a
 * datagram per message): READY=1, STATUS=..., STOPPING=1, RELOADING=1,
 * WATCHDOG=1.  Does nothing when not started by systemd.
 */
#ifndef TGW_NOTIFY_H
#define TGW_NOTIFY_H

#include <stdint.h>

/* Sends one message ("READY=1\nSTATUS=serving").  0, or -1 if there is no
 * socket or the send failed. */
int notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval systemd asked for ($WATCHDOG_USEC, for this
 * process), in milliseconds; 0 if none. */
uint64_t notify_watchdog_ms(void);

#endif
