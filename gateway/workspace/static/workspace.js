// The workspace's own script: live progress from the job's SSE stream, the
// seed's dice, copying a link. Every page works without it (plain forms).
"use strict";
