// Schedules in plain English: the common cron, interval and one-shot forms. Anything this
// small formatter does not recognise is shown as the expression itself, never guessed.

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const DAY_NAMES = { sun: 0, mon: 1, tue: 2, wed: 3, thu: 4, fri: 5, sat: 6 };
const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
  "September", "October", "November", "December"];
const MONTH_NAMES = { jan: 1, feb: 2, mar: 3, apr: 4, may: 5, jun: 6, jul: 7, aug: 8, sep: 9, oct: 10, nov: 11, dec: 12 };

const NUMBER = /^\d{1,2}$/;

function plural(n, unit) {
  return n === 1 ? unit : `${n} ${unit}s`;
}

/** "every 5 minutes", "every hour", "every 90 seconds", "every 1.5 seconds". */
export function everySeconds(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s) || s <= 0) return `every ${seconds} seconds`;
  for (const [size, unit] of [[86400, "day"], [3600, "hour"], [60, "minute"]]) {
    if (s >= size && s % size === 0) return `every ${plural(s / size, unit)}`;
  }
  return `every ${plural(s, "second")}`;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function dayNumber(token) {
  const t = token.toLowerCase();
  if (t in DAY_NAMES) return DAY_NAMES[t];
  if (NUMBER.test(t) && Number(t) <= 7) return Number(t) % 7;
  return null;
}

function monthNumber(token) {
  const t = token.toLowerCase();
  if (t in MONTH_NAMES) return MONTH_NAMES[t];
  if (NUMBER.test(t) && Number(t) >= 1 && Number(t) <= 12) return Number(t);
  return null;
}

/** Day-of-week field: "Monday to Friday", "Saturday and Sunday", "Monday"; null if not plain. */
function daysOfWeek(field) {
  const range = field.match(/^(\w+)-(\w+)$/);
  if (range) {
    const a = dayNumber(range[1]);
    const b = dayNumber(range[2]);
    if (a === null || b === null) return null;
    if (a === 1 && b === 5) return "on weekdays";
    return `on ${DAYS[a]} to ${DAYS[b]}`;
  }
  const days = field.split(",").map(dayNumber);
  if (days.some((d) => d === null)) return null;
  const names = days.map((d) => DAYS[d]);
  if (names.length === 1) return `on ${names[0]}s`;
  return `on ${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

function ordinal(n) {
  const v = n % 100;
  const suffix = v >= 11 && v <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

/** A cron expression in words, or null when it is not one of the forms known here. */
export function cronInWords(expression) {
  const fields = expression.trim().split(/\s+/);
  if (fields.length !== 5 && fields.length !== 6) return null;
  const [sec, min, hour, dom, mon, dow] = fields.length === 6 ? fields : ["0", ...fields];
  const everyDay = dom === "*" && mon === "*" && dow === "*";
  const step = (f) => {
    const m = f.match(/^\*\/(\d+)$/);
    return m ? Number(m[1]) : null;
  };
  // Sub-hour repetitions, every day.
  if (everyDay && hour === "*") {
    if (sec === "*" && min === "*") return "every second";
    if (step(sec) !== null && min === "*") return `every ${plural(step(sec), "second")}`;
    if (NUMBER.test(sec) && min === "*") return sec === "0" ? "every minute" : `every minute at second ${Number(sec)}`;
    if (sec === "0" && step(min) !== null) return `every ${plural(step(min), "minute")}`;
    if (sec === "0" && NUMBER.test(min)) return `every hour at minute ${Number(min)}`;
    return null;
  }
  if (!NUMBER.test(sec) || !NUMBER.test(min)) return null;
  const secondPart = sec === "0" ? "" : `:${pad(sec)}`;
  if (everyDay && step(hour) !== null) {
    return `every ${plural(step(hour), "hour")} at minute ${Number(min)}${secondPart ? ` second ${Number(sec)}` : ""}`;
  }
  if (!NUMBER.test(hour)) return null;
  const time = `at ${pad(hour)}:${pad(min)}${secondPart}`;
  if (everyDay) return `every day ${time}`;
  if (dom === "*" && mon === "*") {
    const days = daysOfWeek(dow);
    return days ? `${time} ${days}` : null;
  }
  if (dow !== "*" || !NUMBER.test(dom)) return null; // both day fields restricted: Vixie's "either" rule
  if (mon === "*") return `${time} on the ${ordinal(Number(dom))} of every month`;
  const month = monthNumber(mon);
  return month === null ? null : `${time} on ${MONTHS[month - 1]} ${Number(dom)}`;
}

/** A task's schedule in plain English; null schedule: runs only when triggered. */
export function scheduleInWords(schedule, formatTime) {
  if (!schedule) return "manual (runs only when triggered)";
  switch (schedule.kind) {
    case "interval": {
      const anchor = schedule.anchor ? ` from ${formatTime(schedule.anchor)}` : "";
      return everySeconds(schedule.every_seconds) + anchor;
    }
    case "once":
      return `once, at ${formatTime(schedule.at)}`;
    case "cron": {
      const words = cronInWords(schedule.expression);
      const zone = schedule.timezone && schedule.timezone !== "UTC" ? schedule.timezone : "UTC";
      if (words === null) return `cron "${schedule.expression}" (${zone})`;
      // Time zones matter only for forms tied to the clock's hours.
      return /^every (second|minute|\d+ (second|minute)s)/.test(words) ? words : `${words} (${zone})`;
    }
    default:
      return JSON.stringify(schedule);
  }
}
