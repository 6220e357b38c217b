/*
 * handlers/plugin.h: what the daemon decides about the plugin kind (the
 * kind itself is handler.h's handler_plugin).  Plugin code (its
 * constructors and init()) never runs with euid 0 unless the daemon says
 * so: a table built as root only checks each plugin file (owner, modes,
 * that it is an ELF object) and loads nothing; such an instance never
 * handles an update.
 */
#ifndef TGW_PLUGIN_H
#define TGW_PLUGIN_H

/* The daemon stays root (started as root without [server] user, warned
 * about): plugins are loaded and run as root from now on. */
void plugin_allow_root(void);

#endif
