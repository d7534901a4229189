package local.bench;

import com.github.kagkarlsson.scheduler.Scheduler;
import com.github.kagkarlsson.scheduler.SchedulerName;
import com.github.kagkarlsson.scheduler.task.ExecutionComplete;
import com.github.kagkarlsson.scheduler.task.SchedulableInstance;
import com.github.kagkarlsson.scheduler.task.helper.RecurringTaskWithPersistentSchedule;
import com.github.kagkarlsson.scheduler.task.helper.ScheduleAndData;
import com.github.kagkarlsson.scheduler.task.helper.Tasks;
import com.github.kagkarlsson.scheduler.task.schedule.Schedule;
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;

/**
 * The lateness workload of tests.bench.lateness on db-scheduler 16.7.1 with PostgreSQL.
 *
 * <pre>
 * java -cp dbscheduler-peer.jar:lib/* local.bench.DbSchedulerPeer --jdbc-url URL --tasks N
 *     --period P --seconds S --warmup W [--spread] [--poll-ms 50] [--threads 20]
 * </pre>
 *
 * <p>N recurring tasks (one db-scheduler task, N instances each with its own persistent schedule:
 * how db-scheduler models many recurring jobs defined at run time) fire every P seconds at exact
 * slots anchor + k*P, with --spread the i-th offset by i*P/N. The scheduler polls with
 * lock-and-fetch (SELECT ... FOR UPDATE SKIP LOCKED) on a fixed pool of --threads. For each
 * execution the handler records its slot (the execution's scheduled time) and when it began
 * ("dispatch": db-scheduler hands each execution it locked to its thread pool, which runs the work
 * at once, with no dispatch step of its own, so dispatch and start are one instant). Only slots inside the window [anchor + W, anchor + W + S) count: expected =
 * floor(S/P) * N; missed = expected slots never run; doubled = a slot run more than once.
 * Percentiles are nearest rank, as tests/bench/common.py pct. Prints one JSON line on stdout.
 */
public final class DbSchedulerPeer {

  private DbSchedulerPeer() {}

  /**
   * One task's slots: first + k * period, in whole microseconds because PostgreSQL keeps
   * microseconds (a slot with nanoseconds would come back earlier than itself and run twice).
   */
  public static final class SlotSchedule implements Schedule, ScheduleAndData {
    private static final long serialVersionUID = 1L;

    /** The first slot, microseconds since the epoch. */
    private final long firstMicros;

    /** The period in microseconds. */
    private final long periodMicros;

    /** The task's index (0..N-1), carried as the instance's data. */
    private final int index;

    SlotSchedule(long firstMicros, long periodMicros, int index) {
      this.firstMicros = firstMicros;
      this.periodMicros = periodMicros;
      this.index = index;
    }

    /** The slot after the one that just ran, however late it ran (every slot runs, none skipped). */
    @Override
    public Instant getNextExecutionTime(ExecutionComplete done) {
      long ran = micros(done.getExecution().getExecutionTime());
      // Rounded, so a stored time a microsecond off its slot still names that slot.
      long k = Math.floorDiv(ran - firstMicros + periodMicros / 2, periodMicros);
      return instant(firstMicros + (Math.max(k, -1) + 1) * periodMicros);
    }

    /** The first slot at or after now. */
    @Override
    public Instant getInitialExecutionTime(Instant now) {
      long k = Math.max(0, Math.floorDiv(micros(now) - firstMicros + periodMicros - 1, periodMicros));
      return instant(firstMicros + k * periodMicros);
    }

    @Override
    public boolean isDeterministic() {
      return true;
    }

    @Override
    public Schedule getSchedule() {
      return this;
    }

    @Override
    public Object getData() {
      return index;
    }
  }

  /** One execution: which task, its slot, and how late its handler began. */
  record Sample(int task, long slotMicros, long lateMicros) {}

  /** A task's slot, counted once however often it ran. */
  record Slot(int task, long slotMicros) {}

  static long micros(Instant t) {
    return Math.addExact(Math.multiplyExact(t.getEpochSecond(), 1_000_000L), t.getNano() / 1_000);
  }

  static Instant instant(long micros) {
    return Instant.EPOCH.plus(micros, ChronoUnit.MICROS);
  }

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = parse(argv);
    String jdbcUrl = required(args, "jdbc-url");
    int tasks = Integer.parseInt(required(args, "tasks"));
    double period = Double.parseDouble(required(args, "period"));
    double seconds = Double.parseDouble(required(args, "seconds"));
    double warmup = Double.parseDouble(args.getOrDefault("warmup", "10"));
    boolean spread = args.containsKey("spread");
    // db-scheduler's default is 10 s; 50 ms is the firing tick of the scheduler it is compared
    // with (streams/settings.py firing_tick_seconds), so both look for due work as often.
    long pollMs = Long.parseLong(args.getOrDefault("poll-ms", "50"));
    int threads = Integer.parseInt(args.getOrDefault("threads", "20"));
    if (tasks <= 0 || period <= 0 || seconds <= 0 || warmup < 0 || pollMs <= 0 || threads <= 0) {
      usage("tasks, period, seconds, poll-ms and threads must be positive, warmup not negative");
    }

    HikariConfig pool = new HikariConfig();
    pool.setJdbcUrl(jdbcUrl);
    // One connection per execution thread, plus the poller, heartbeats and housekeeping.
    pool.setMaximumPoolSize(threads + 5);
    try (HikariDataSource ds = new HikariDataSource(pool)) {
      createTable(ds);
      ConcurrentLinkedQueue<Sample> samples = new ConcurrentLinkedQueue<>();
      RecurringTaskWithPersistentSchedule<SlotSchedule> task =
          Tasks.recurringWithPersistentSchedule("bench", SlotSchedule.class)
              .execute(
                  (instance, context) -> {
                    long now = micros(Instant.now());
                    long slot = micros(context.getExecution().executionTime);
                    samples.add(new Sample(instance.getData().index, slot, now - slot));
                  });
      Scheduler scheduler =
          Scheduler.create(ds, task)
              .schedulerName(new SchedulerName.Fixed("bench-peer"))
              .threads(threads)
              .pollingInterval(Duration.ofMillis(pollMs))
              // db-scheduler's suggestion for normal use: fetch a batch of up to one per thread,
              // fetch again early when half the threads are free.
              .pollUsingLockAndFetch(0.5, 1.0)
              .shutdownMaxWait(Duration.ofSeconds(10))
              .build();
      scheduler.start();

      long periodMicros = Math.round(period * 1e6);
      long anchor = micros(Instant.now().truncatedTo(ChronoUnit.SECONDS).plusSeconds(2));
      long windowStart = anchor + Math.round(warmup * 1e6);
      long windowEnd = windowStart + Math.round(seconds * 1e6);
      List<SchedulableInstance<?>> instances = new ArrayList<>(tasks);
      for (int i = 0; i < tasks; i++) {
        long offset = spread ? Math.round((double) periodMicros * i / tasks) : 0;
        SlotSchedule schedule = new SlotSchedule(anchor + offset, periodMicros, i);
        instances.add(task.schedulableInstance(String.format("task-%06d", i), schedule));
      }
      scheduler.scheduleBatch(instances);

      long waitMs = (windowEnd - micros(Instant.now())) / 1000 + 3000;
      Thread.sleep(Math.max(waitMs, 0));
      scheduler.stop();
      System.out.println(figures(samples, tasks, period, seconds, windowStart, windowEnd, pollMs, threads));
    }
  }

  static void createTable(HikariDataSource ds) throws SQLException, IOException {
    String ddl;
    try (InputStream in = DbSchedulerPeer.class.getResourceAsStream("/postgresql_tables.sql")) {
      if (in == null) {
        throw new IOException("postgresql_tables.sql is missing from the jar");
      }
      ddl = new String(in.readAllBytes(), StandardCharsets.UTF_8);
    }
    try (Connection c = ds.getConnection();
        Statement s = c.createStatement()) {
      s.execute("DROP TABLE IF EXISTS scheduled_tasks");
      s.execute(ddl);
    }
  }

  static String figures(
      ConcurrentLinkedQueue<Sample> samples,
      int tasks,
      double period,
      double seconds,
      long windowStart,
      long windowEnd,
      long pollMs,
      int threads) {
    Map<Slot, Integer> runs = new HashMap<>();
    List<Double> late = new ArrayList<>();
    for (Sample s : samples) {
      if (s.slotMicros() < windowStart || s.slotMicros() >= windowEnd) {
        continue;
      }
      runs.merge(new Slot(s.task(), s.slotMicros()), 1, Integer::sum);
      late.add(s.lateMicros() / 1000.0);
    }
    long expected = (long) (seconds / period) * tasks;
    long doubled = runs.values().stream().mapToLong(n -> n - 1).sum();
    long missed = Math.max(expected - runs.size(), 0);
    late.sort(null);
    String dispatch =
        String.format(
            Locale.ROOT, "[%s, %s, %s]", num(pct(late, 50)), num(pct(late, 99)),
            num(late.isEmpty() ? Double.NaN : late.get(late.size() - 1)));
    return String.format(
        Locale.ROOT,
        "{\"tasks\": %d, \"period\": %s, \"seconds\": %s, \"dispatched\": %d, \"expected\": %d, "
            + "\"missed\": %d, \"doubled\": %d, \"dispatch_ms\": %s, \"start_ms\": %s, "
            + "\"rss_peak_mb\": %s, \"rss_end_mb\": %s, \"poll_ms\": %d, \"threads\": %d}",
        tasks, num(period), num(seconds), late.size(), expected, missed, doubled, dispatch, dispatch,
        num(procStatusMb("VmHWM")), num(procStatusMb("VmRSS")), pollMs, threads);
  }

  /** The p-th percentile by nearest rank, rounding half to even as Python's round() does. */
  static double pct(List<Double> sorted, double p) {
    if (sorted.isEmpty()) {
      return Double.NaN;
    }
    int i = (int) Math.rint(p / 100 * (sorted.size() - 1));
    return sorted.get(Math.min(sorted.size() - 1, i));
  }

  static String num(double x) {
    return Double.isNaN(x) ? "NaN" : String.format(Locale.ROOT, "%.3f", x);
  }

  /** A /proc/self/status figure (VmHWM: peak resident memory, VmRSS: now) in MB; NaN if absent. */
  static double procStatusMb(String field) {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith(field + ":")) {
          return Long.parseLong(line.split("\\s+")[1]) / 1024.0;
        }
      }
    } catch (IOException | RuntimeException e) {
      // Not Linux: the Python side samples the process's memory itself.
    }
    return Double.NaN;
  }

  static Map<String, String> parse(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i < argv.length; i++) {
      if (!argv[i].startsWith("--")) {
        usage("unexpected argument " + argv[i]);
      }
      String key = argv[i].substring(2);
      if (key.equals("spread")) {
        args.put(key, "true");
      } else if (i + 1 < argv.length) {
        args.put(key, argv[++i]);
      } else {
        usage("--" + key + " needs a value");
      }
    }
    return args;
  }

  static String required(Map<String, String> args, String key) {
    String value = args.get(key);
    if (value == null) {
      usage("--" + key + " is required");
    }
    return value;
  }

  static void usage(String problem) {
    System.err.println(
        "dbscheduler-peer: error: "
            + problem
            + "\nusage: --jdbc-url URL --tasks N --period SECONDS --seconds WINDOW [--warmup SECONDS]"
            + " [--spread] [--poll-ms 50] [--threads 20]");
    System.exit(2);
  }
}
