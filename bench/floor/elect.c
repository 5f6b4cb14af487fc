/* The floor of an election: what one agent's hook cannot avoid when its check fails at the same
 * instant as everyone else's. It runs the check (one fork and exec of `sh -c CHECK`, as the hook
 * does), then under an exclusive flock reads the state file, and writes it back by rename: the
 * first agent to get the lock records itself as the fixer (and fsyncs, as buildlock's fixer
 * does), every later one adds itself as a waiter (no fsync). Exit 1 for the fixer, 75 for a
 * waiter, as buildlock's hook.
 *
 * usage: elect DIR AGENT CHECK
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(70); }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: elect DIR AGENT CHECK\n"); return 2; }
    const char *dir = argv[1], *agent = argv[2], *check = argv[3];
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", check, (char *)0);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;

    char lock[4096], state[4096], tmp[4096];
    snprintf(lock, sizeof lock, "%s/election.lock", dir);
    snprintf(state, sizeof state, "%s/state.json", dir);
    snprintf(tmp, sizeof tmp, "%s/state.json.%d", dir, (int)getpid());
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0) die("open lock");
    if (flock(lfd, LOCK_EX) < 0) die("flock");

    static char buf[1 << 20];
    ssize_t len = 0;
    int sfd = open(state, O_RDONLY | O_CLOEXEC);
    if (sfd >= 0) {
        ssize_t r;
        while (len < (ssize_t)sizeof buf - 256 && (r = read(sfd, buf + len, sizeof buf - 256 - len)) > 0)
            len += r;
        close(sfd);
    }
    int fixer = len == 0;
    if (fixer)
        len = snprintf(buf, sizeof buf, "{\"fixer\":\"%s\",\"waiters\":[]}", agent);
    else if (len > 2) /* insert before the closing "]}" */
        len = len - 2 + snprintf(buf + len - 2, 256, "%s\"%s\"]}", buf[len - 3] == '[' ? "" : ",", agent);
    int tfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (tfd < 0) die("open tmp");
    if (write(tfd, buf, len) != len) die("write");
    if (fixer && fsync(tfd) < 0) die("fsync");
    close(tfd);
    if (rename(tmp, state) < 0) die("rename");
    close(lfd);
    return fixer ? 1 : 75;
}
