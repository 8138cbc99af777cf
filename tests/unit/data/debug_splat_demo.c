// SPDX-License-Identifier: GPL-2.0
/* Makes lockdep and DEBUG_ATOMIC_SLEEP report, for hmmlab's splat samples. */
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/delay.h>

static char *mode = "circular";
module_param(mode, charp, 0444);

static DEFINE_MUTEX(demo_a);
static DEFINE_MUTEX(demo_b);
static DEFINE_SPINLOCK(demo_lock);
static struct timer_list demo_timer;

static void demo_timer_fn(struct timer_list *t)
{
	spin_lock(&demo_lock);
	spin_unlock(&demo_lock);
}

static noinline void demo_take_ab(void)
{
	mutex_lock(&demo_a);
	mutex_lock(&demo_b);
	mutex_unlock(&demo_b);
	mutex_unlock(&demo_a);
}

static noinline void demo_take_ba(void)
{
	mutex_lock(&demo_b);
	mutex_lock(&demo_a);
	mutex_unlock(&demo_a);
	mutex_unlock(&demo_b);
}

static noinline void demo_process_lock(void)
{
	spin_lock(&demo_lock);
	spin_unlock(&demo_lock);
}

static noinline void demo_sleep_locked(void)
{
	spin_lock(&demo_lock);
	msleep(1);
	spin_unlock(&demo_lock);
}

static int __init splat_demo_init(void)
{
	if (!strcmp(mode, "circular")) {
		demo_take_ab();
		demo_take_ba();
	} else if (!strcmp(mode, "inconsistent")) {
		timer_setup(&demo_timer, demo_timer_fn, 0);
		mod_timer(&demo_timer, jiffies + 1);
		msleep(100);
		demo_process_lock();
		del_timer_sync(&demo_timer);
	} else if (!strcmp(mode, "sleep")) {
		demo_sleep_locked();
	}
	return 0;
}

static void __exit splat_demo_exit(void)
{
}

module_init(splat_demo_init);
module_exit(splat_demo_exit);
MODULE_LICENSE("GPL");
