"""First module the generate stage's forkserver imports: from here on, what the preloaded libraries print at import
(torchao's kernel-library load failures, torch._pytree deprecations, transformers' torchvision notices, ...) goes
to the pending log evalkit.logs names, not to the user's console. With -v it does nothing. Backend processes forked
later point their own output at logs/<backend>.log (evalkit.generate.worker.run.forked_main)."""

import os

from evalkit.logs import PENDING_LOG_ENV, is_verbose, redirect_process_output

if os.environ.get(PENDING_LOG_ENV) and not is_verbose():
    redirect_process_output(os.environ[PENDING_LOG_ENV])
