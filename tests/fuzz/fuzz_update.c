/* libFuzzer target: update parsing with command extraction, the
 * conversation key, and the template expansion handlers do on it. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "template.h"
#include "update.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct template *t;
	struct update *u;

	if (t == NULL)
		t = template_compile("{from.first_name} {args} {command} "
		    "{chat.id} {photo.0.file_id} {entities}", NULL, 0);
	u = update_parse((const char *)data, size, NULL, 0);
	if (u != NULL) {
		char *s = template_expand(t, u), key[UPDATE_KEY_MAX];

		(void)update_command_is_ours(u, "SomeBot");
		(void)update_conversation_key(u, key);
		free(s);
		update_free(u);
	}
	return 0;
}
