/* The floor of a hook: a static C program that does nothing. What exec, the dynamic loader (none
 * here) and process exit cost on this machine; bench/run.py's "floors" section times it beside
 * `sh -c true` and buildlock's hook. */
int main(void) { return 0; }
